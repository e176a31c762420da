#!/usr/bin/env bash
# fp8 vs bf16 on one CUDA GPU of compute capability >= 8.9 (one H200: well under 10 minutes).
# Measures the demo task's accuracy (fp32 / bf16 / fp8 teacher) and decode throughput at batch
# 1 and 64 (demo teacher and a 1B Llama built from config); prints a table and writes
# results.json + results.txt into $OUT (if set) or benchmarks/gpu/.
#
#   benchmarks/gpu/prepare.sh      # once, on a machine with PyPI: pinned wheels + trained teacher
#   benchmarks/gpu/run.sh          # on the GPU machine (extra args go to fp8_vs_bf16.py)
#
# Without a CUDA GPU it stops at once with exit code 2 and says why.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
WORK="$HERE/_work"
PY=${PYTHON:-python3}
OUTDIR=${OUT:-$HERE}

# 1. fail fast and clearly where there is no usable GPU (before installing anything)
"$PY" - <<'PY'
import sys
try:
    import torch
except ImportError:
    sys.exit("run.sh: PyTorch is not importable by this python; set PYTHON=/path/to/python with a CUDA torch")
if not torch.cuda.is_available():
    print("run.sh: no CUDA GPU visible: fp8 needs a CUDA GPU of compute capability >= 8.9 "
          "(L4, L40S, H100, H200, B200); nothing was measured", file=sys.stderr)
    sys.exit(2)
cc = torch.cuda.get_device_capability()
if tuple(cc) < (8, 9):
    print(f"run.sh: {torch.cuda.get_device_name()} has compute capability {cc[0]}.{cc[1]} < 8.9: no fp8", file=sys.stderr)
    sys.exit(2)
print(f"run.sh: {torch.cuda.get_device_name()} (sm_{cc[0]}{cc[1]}), torch {torch.__version__}")
PY

# 2. the pinned packages this toolkit needs, if carried (prepare.sh), ahead of the image's own
if compgen -G "$WORK/whl/*.whl" > /dev/null; then
  SITE=$(mktemp -d /tmp/slm_gpu_site.XXXXXX)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$WORK"/whl/*.whl
  export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "run.sh: no carried wheels in $WORK/whl: using this environment's packages (see prepare.sh)" >&2
  export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export SLM_CACHE=${SLM_CACHE:-$WORK/cache}

# 3. the trained demo teacher, if carried; else it is trained here first (CPU, several minutes)
TEACHER=builtin:arith-teacher
if [ -f "$WORK/teacher/model.safetensors" ]; then
  TEACHER="$WORK/teacher"
else
  echo "run.sh: no carried teacher in $WORK/teacher: training builtin:arith-teacher here first" >&2
fi

# 4. measure (hard limit 9.5 minutes); the table goes to stdout and results.txt
mkdir -p "$OUTDIR"
timeout 570 "$PY" "$HERE/fp8_vs_bf16.py" --teacher "$TEACHER" --out "$OUTDIR/results.json" "$@" \
  2>&1 | tee "$OUTDIR/results.txt"

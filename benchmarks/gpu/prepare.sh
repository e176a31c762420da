#!/usr/bin/env bash
# Prepare benchmarks/gpu/_work (git-ignored) for a GPU machine that has no network:
#   _work/whl      the pinned wheels the toolkit needs that a CUDA PyTorch image may lack or hold in
#                  other versions (torchao, transformers 4.57 and its tokenizers/hub, pydantic),
#                  for CPython 3.12 on x86-64 Linux (PY_VERSION=3.11 etc. to change);
#   _work/teacher  the trained builtin:arith-teacher (trained here first if not cached).
# Then run benchmarks/gpu/run.sh there with benchmarks/gpu/_work carried along (~26 MB).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PY=${PYTHON:-python3}
PY_VERSION=${PY_VERSION:-3.12}
mkdir -p "$HERE/_work/whl"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$HERE/_work/whl" \
  torchao==0.18.0 transformers==4.57.6 tokenizers==0.22.2 huggingface_hub==0.36.2 \
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
cd "$REPO"
TEACHER=$(HF_HUB_OFFLINE=1 "$PY" -c "from slm_toolkit.models.resolve import resolve_model; print(resolve_model('builtin:arith-teacher', task={}))" | tail -1)
rm -rf "$HERE/_work/teacher" && cp -r "$TEACHER" "$HERE/_work/teacher"
du -sh "$HERE/_work"

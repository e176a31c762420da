"""onnxruntime-genai's own environment: its model builder needs transformers 5, the toolkit pins 4.57.

A virtual environment under the work folder gets onnxruntime-genai and transformers 5 from the
package index; torch and the rest come from the toolkit's environment through a .pth file that
sits after the venv's own site-packages (so transformers 5 shadows 4.57 there, and nothing in
the toolkit's environment is changed). Returns (python, None) or (None, why it failed).
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

PACKAGES = ["onnxruntime-genai==0.18.0", "transformers>=5,<6"]


def ensure_env(root: Path) -> tuple[Path | None, str | None]:
    python = root / "bin" / "python"
    stamp = root / ".ready"
    if stamp.exists():
        return python, None
    try:
        venv.EnvBuilder(with_pip=True, clear=True).create(root)
        site = subprocess.check_output(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
        Path(site, "zz_toolkit_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *PACKAGES],
            check=True,
            capture_output=True,
            text=True,
            timeout=900,
        )
    except subprocess.CalledProcessError as exc:
        return None, f"pip install {' '.join(PACKAGES)} failed: {(exc.stderr or '')[-400:]}"
    except Exception as exc:  # no venv module, no network, timeout: the row says why
        return None, f"could not create the onnxruntime-genai environment: {exc!r}"
    stamp.write_text("ok\n")
    return python, None


def build_int4(python: Path, hf: Path, out: Path, cache: Path) -> str | None:
    """Run genai's model builder (int4, block 32, accuracy level 4 = int8 compute). None or why not."""
    if (out / "genai_config.json").exists():
        return None
    cmd = [
        str(python),
        "-m",
        "onnxruntime_genai.models.builder",
        "-i",
        str(hf),
        "-o",
        str(out),
        "-p",
        "int4",
        "-e",
        "cpu",
        "-c",
        str(cache),
        "--extra_options",
        "int4_block_size=32",
        "int4_accuracy_level=4",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    if res.returncode != 0 or not (out / "genai_config.json").exists():
        return f"onnxruntime-genai's builder failed: {(res.stderr or res.stdout)[-400:]}"
    return None


if __name__ == "__main__":
    print(ensure_env(Path(sys.argv[1])))

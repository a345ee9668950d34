"""ONNX -> LiteRT (.tflite) with onnx2tf, run in an environment of its own.

onnx2tf 2.x needs Python >= 3.12 and pins exact onnx and onnxruntime versions, which would move
edgetl's own; `uv tool run` makes that environment from PyPI on first use and keeps it in uv's cache.
Its default `flatbuffer_direct` backend writes the flatbuffer without TensorFlow. The model comes out
NHWC (the layout LiteRT's kernels run natively), batch 1; the .tflite's own metadata says NHWC, so the
runtime's preprocessing gives it that layout and nobody transposes by hand. docs/litert.md records
the routes measured and why this one is the default.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from edgetl.console import log
from edgetl.errors import EdgetlError
from edgetl.exporter.parity import Parity
from edgetl_runtime.backends import BackendName
from edgetl_runtime.litert import write_tflite_metadata
from edgetl_runtime.modelinfo import ModelInfo
from edgetl_runtime.preprocess import PreprocessSpec

ONNX2TF = "onnx2tf==2.6.9"
MIN_PYTHON = (3, 12)
PYTHON_ENV = "EDGETL_LITERT_PYTHON"  # a Python >= 3.12 for the converter's environment
CONVERT_TIMEOUT_S = 1800
TEXT_REFUSAL = (
    "a text run ships as ONNX only: onnx2tf converts its encoder, but its agreement with ONNX on "
    "held-out texts is unmeasured and the LiteRT session takes no token inputs yet (docs/text.md)"
)


def litert_spec(spec: PreprocessSpec) -> PreprocessSpec:
    """The preprocessing of the .tflite: the ONNX model's, channels last."""
    return dataclasses.replace(spec, layout="NHWC")


def _python_version(python: str) -> tuple[int, int] | None:
    try:
        done = subprocess.run(
            [python, "-c", "import sys; print(*sys.version_info[:2])"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    except OSError:
        return None
    parts = done.stdout.split()
    return (int(parts[0]), int(parts[1])) if done.returncode == 0 and len(parts) == 2 else None


def _candidates() -> list[str]:
    """$EDGETL_LITERT_PYTHON, python3.13/python3.12 on PATH, then pyenv's installed versions (whose
    shims refuse a version that is not selected, so they are asked by path)."""
    found = [os.environ[PYTHON_ENV]] if os.environ.get(PYTHON_ENV) else []
    found += [p for p in (shutil.which(f"python3.{m}") for m in (13, 12)) if p]
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    if root.is_dir():
        found += [str(p) for p in sorted(root.glob("3.1[2-9]*/bin/python3"), reverse=True)]
    return found


def find_converter() -> tuple[str, str]:
    """(uv, python) for the converter's environment, or EdgetlError saying what to install."""
    uv = shutil.which("uv")
    if uv is None:
        raise EdgetlError(
            "--format litert: the converter runs in its own environment made by uv; pip install uv"
        )
    for python in _candidates():
        version = _python_version(python)
        if version is not None and version >= MIN_PYTHON:
            return uv, python
    raise EdgetlError(
        f"--format litert: the converter ({ONNX2TF}) needs Python >= 3.12 and none was found; install "
        f"one (`uv python install 3.12`, pyenv) or point {PYTHON_ENV} at it"
    )


def converter_reason() -> str | None:
    """Why the converter cannot run here, or None."""
    try:
        find_converter()
    except EdgetlError as e:
        return str(e)
    return None


def onnx_to_tflite(onnx_path: Path, out: Path) -> Path:
    """Convert an FP32 ONNX model to an FP32 .tflite at `out` (no metadata yet)."""
    uv, python = find_converter()
    with tempfile.TemporaryDirectory(prefix="edgetl-onnx2tf-") as tmp:
        work = Path(tmp)
        # onnx2tf rewrites its input in place (simplified, batch fixed): it gets a copy
        source = work / "model.onnx"
        shutil.copyfile(onnx_path, source)
        command = [
            uv, "tool", "run", "--no-python-downloads", "--python", python, "--from", ONNX2TF,
            "onnx2tf", "-i", str(source), "-o", str(work / "out"), "-b", "1", "--non_verbose",
        ]  # fmt: skip
        log(f"converting to LiteRT with {ONNX2TF} (its own environment, made by uv on first use)")
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=CONVERT_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired:
            raise EdgetlError(f"--format litert: {ONNX2TF} ran past {CONVERT_TIMEOUT_S} s") from None
        produced = work / "out" / "model_float32.tflite"
        if done.returncode != 0 or not produced.is_file():
            lines = [x for x in (done.stderr + done.stdout).strip().splitlines() if x.strip()]
            raise EdgetlError(
                f"--format litert: {ONNX2TF} could not convert {onnx_path.name} "
                f"({lines[-1].strip() if lines else f'exit {done.returncode}'}); nothing was written"
            )
        shutil.copyfile(produced, out)
    return out


def write_litert(
    onnx_path: Path, tflite: Path, info: ModelInfo, stack: contextlib.ExitStack, check: Callable
) -> Parity:
    """ONNX -> .tflite with the metadata inside, gated against the ONNX model, renamed on success."""
    from edgetl_runtime.fileio import atomic_output

    tmp = stack.enter_context(atomic_output(tflite))
    raw = tmp.with_name(tmp.name + ".raw")
    stack.callback(raw.unlink, missing_ok=True)
    onnx_to_tflite(onnx_path, raw)
    meta = info.with_(preprocess=litert_spec(info.preprocess)).to_metadata()
    write_tflite_metadata(raw, tmp, meta)
    return check(tmp, BackendName.LITERT_CPU, layout="NHWC")

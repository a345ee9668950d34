"""The one check every command's outputs go through: never onto an input, into an image folder,
onto another output, or over an artifact of another kind (told by its run-folder name or its bytes)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from edgetl.errors import EdgetlError
from edgetl.runfolder.folder import ARTIFACTS, SPLITS, Kind
from edgetl_runtime.modelinfo import ModelInfo, Precision


def _sniff_html(head: bytes) -> bool:
    return head.lstrip().lower().startswith((b"<!doctype html", b"<html"))


def _sniff_safetensors(head: bytes) -> bool:
    return len(head) > 9 and int.from_bytes(head[:8], "little") > 0 and head[8:10] == b'{"'


# First bytes of a file -> what edgetl artifact it is (files outside a run folder, or renamed ones).
SIGNATURES: tuple[tuple[Callable[[bytes], bool], Kind], ...] = (
    (lambda head: head.startswith(b"\x89PNG\r\n\x1a\n"), Kind.PLOT),
    (lambda head: head.startswith(b"\x1f\x8b"), Kind.BUNDLE),
    (_sniff_html, Kind.REPORT),
    (_sniff_safetensors, Kind.CHECKPOINT),
)


def _kind_of(path: Path) -> Kind | None:
    """The kind of an existing path: by its run-folder name, an edgetl bundle folder, a model file's
    precision (a model without edgetl metadata counts as FP32), else by its first bytes."""
    if path.name in ARTIFACTS and path.parent.joinpath(SPLITS).is_file():
        return ARTIFACTS[path.name]
    if path.is_dir():
        return Kind.BUNDLE if (path / "manifest.json").is_file() else None
    from edgetl_runtime.modelfile import is_model_file

    if is_model_file(path):
        from edgetl_runtime.modelfile import read_model_info

        try:
            info: ModelInfo = read_model_info(path)
        except EdgetlError:
            return Kind.FP32_MODEL
        return Kind.INT8_MODEL if info.precision is Precision.INT8 else Kind.FP32_MODEL
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return None
    return next((kind for sniff, kind in SIGNATURES if sniff(head)), None)


def _same_path(a: Path, b: Path) -> bool:
    if not (a.exists() and b.exists()):
        return a.resolve() == b.resolve()
    return os.path.samefile(a, b)


def check_outputs(
    outputs: Sequence[tuple[str, str | Path | None, Kind | tuple[Kind, ...]]],
    *,
    inputs: Sequence[str | Path | None] = (),
    image_folders: Sequence[str | Path | None] = (),
) -> None:
    """The one check every command's outputs go through, before any work: each (option, path, kind)
    must not be one of the command's `inputs`, nor inside one of its `image_folders` (a later run
    would read it as a photo), nor another output of the same command, nor an existing artifact of
    another kind (a tuple of kinds: any of them may be replaced).

    quantize checks [("--out", out, INT8_MODEL), ("--manifest", manifest, CALIBRATION)] with
    inputs=[model, calibration, eval]: `--manifest model.onnx` is refused instead of replacing the
    FP32 model with a calibration manifest. A `None` path (an option not given) is skipped.
    """
    given = [(option, Path(path), kind) for option, path, kind in outputs if path is not None]
    sources = [Path(p) for p in [*inputs, *image_folders] if p is not None]
    folders = [Path(p).resolve() for p in image_folders if p is not None and Path(p).is_dir()]
    for i, (option, out, kind) in enumerate(given):
        for source in sources:
            if _same_path(out, source):
                raise EdgetlError(f"{option} {out}: is this command's own input; choose another path")
        for folder in folders:
            if out.resolve().is_relative_to(folder):
                raise EdgetlError(
                    f"{option} {out}: is inside the image folder {folder}; choose a path outside it"
                )
        for other_option, other, _ in given[:i]:
            if _same_path(out, other):
                raise EdgetlError(f"{option} {out}: is also {other_option}; give each output its own path")
        _check_kind(option, out, kind)


def _check_kind(option: str, out: Path, kind: Kind | tuple[Kind, ...]) -> None:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not out.exists():
        named = ARTIFACTS.get(out.name) if out.parent.joinpath(SPLITS).is_file() else None
        if named is not None and named not in kinds:
            raise EdgetlError(f"{option} {out}: that name holds the run's {named.value}; choose another path")
        return
    existing = _kind_of(out)
    if existing is not None and existing not in kinds:
        wanted = " or ".join(k.value for k in kinds)
        raise EdgetlError(f"{option} {out}: holds a {existing.value}, not a {wanted}; choose another path")

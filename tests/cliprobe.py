"""Helpers of the hostile-input tables: run either command-line tool in-process, assert the one-line
error and the shared JSON error shape, and make the broken inputs (images, datasets, archives, manifests)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image

from edgetl.cli import main as edgetl_main
from edgetl_runtime.bundle import write_gzip
from edgetl_runtime.cli import main as run_main
from edgetl_runtime.manifest import MANIFEST, Manifest
from edgetl_runtime.preprocess import PreprocessSpec

SMALL = PreprocessSpec(crop=32, resize=36, mean=(0.5,) * 3, std=(0.5,) * 3)


@dataclass(frozen=True)
class Outcome:
    code: int
    out: str
    err: str

    @property
    def error(self) -> dict:
        return json.loads(self.out)["error"]


def invoke(tool: str, args: list[str]) -> Outcome:
    """Run `edgetl` (click) or `edgetl-run` (argparse) in-process, capturing stdout and stderr apart."""
    if tool == "edgetl":
        result = CliRunner().invoke(edgetl_main, args)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return Outcome(result.exit_code, result.stdout, result.stderr)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = run_main(args)
        except SystemExit as e:
            code = e.code
    return Outcome(code, out.getvalue(), err.getvalue())


def assert_one_line(outcome: Outcome, code: int, message: str) -> None:
    assert outcome.code == code, (outcome.code, outcome.err, outcome.out)
    assert "Traceback" not in outcome.err + outcome.out
    # progress lines may come first; the error is one line, the last one
    lines = [line for line in outcome.err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], outcome.err
    assert message in errors[0], errors[0]


def assert_json_error(outcome: Outcome, message: str, option: str | None = None) -> None:
    error = outcome.error
    assert set(error) == {"message", "option", "path", "kind"}, error
    assert message in error["message"] and "\n" not in error["message"]
    if option is not None:
        assert error["option"] == option


# --- inputs -----------------------------------------------------------------------------------


def write_png(path: Path, size=(40, 40), seed=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def truncated_jpeg(path: Path) -> Path:
    write_png(path.with_suffix(".png"))
    Image.open(path.with_suffix(".png")).save(path, "JPEG")
    path.with_suffix(".png").unlink()
    path.write_bytes(path.read_bytes()[:200])
    return path


def text_as_jpg(path: Path) -> Path:
    path.write_text("this is a text file, not a photo\n")
    return path


def symlink_loop(path: Path) -> Path:
    path.symlink_to(path.name)  # points at itself
    return path


def dataset(root: Path, classes: dict[str, int], val: dict[str, int] | None = None) -> Path:
    for split, counts in (("train", classes), ("val", val or {})):
        for name, n in counts.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                write_png(folder / f"{i}.png", seed=hash((split, name, i)) % 1000)
    return root


def rewrite_manifest(folder: Path, **changes) -> None:
    """An attacker's edit: change fields and recompute the digest so the manifest checks out."""
    manifest = Manifest.from_json((folder / MANIFEST).read_bytes())
    (folder / MANIFEST).write_text(dataclasses.replace(manifest, **changes).to_json(), encoding="utf-8")


def rewrite_manifest_dict(folder: Path, edit: Callable[[dict], None]) -> None:
    """Rewrite the raw manifest dict (values no dataclass would accept) with a recomputed digest."""
    from edgetl_runtime.manifest import _canonical, _digest

    body = json.loads((folder / MANIFEST).read_text())
    body.pop("digest")
    edit(body)
    (folder / MANIFEST).write_text(_canonical({**body, "digest": _digest(body)}), encoding="utf-8")


def tar_gz(path: Path, members: list[tuple[tarfile.TarInfo, io.IOBase | None]]) -> Path:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, data)
    raw.seek(0)
    return write_gzip(raw, path)


class Zeros(io.RawIOBase):
    """`size` zero bytes without holding them: the 2 GiB-member archive in miniature."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def member(name: str, size: int = 0, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.linkname, info.mode = size, kind, link, 0o644
    return info

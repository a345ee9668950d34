"""Small file helpers shared by edgetl and the device runtime."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import EXIT_CRASH, EdgetlError, describe_error


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _unwritable(path: Path, option: str, error: OSError) -> EdgetlError:
    return EdgetlError(
        f"{option} {path}: cannot write there ({error.strerror or error}); choose a writable path"
    )


def _prepare(path: Path, option: str, folder: bool) -> Path:
    """Refuse a file where a folder is wanted (or the reverse); create and return the parent folder."""
    if path.exists() and path.is_dir() != folder:
        kind, want = ("a file", "folder") if folder else ("a folder", "file")
        raise EdgetlError(f"{option} {path}: is {kind}; give a {want} path")
    parent = path if folder else path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _unwritable(path, option, e) from None
    return parent


def check_writable(path: str | os.PathLike, option: str, *, folder: bool = False) -> Path:
    """Fail before slow work, not after it: `path` (a file, or a folder when `folder`) can be written.

    Creates the folder that will hold it; `option` names the flag in the error (e.g. "--out").
    """
    path = Path(path)
    parent = _prepare(path, option, folder)
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        raise _unwritable(path, option, e) from None
    return path


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, option: str = "output") -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` only if the block succeeds.

    Readers never see a half-written artifact, and a failure leaves nothing behind.
    """
    path = Path(path)
    parent = _prepare(path, option, folder=False)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=parent)
    except OSError as e:
        raise _unwritable(path, option, e) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.is_file():
            # mkstemp creates 0600; artifacts get the permissions any other new file would have.
            tmp_path.chmod(0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def _json_safe(value):
    """NaN/inf are not JSON: they become null, so every consumer can parse the summary."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def json_text(summary: dict) -> str:
    """One JSON object as text: paths and enums as strings, NaN/inf as null."""
    return json.dumps(_json_safe(summary), default=str)


def print_json(summary: dict) -> None:
    """Exactly one JSON object on stdout, nothing else."""
    sys.stdout.write(json_text(summary) + "\n")
    sys.stdout.flush()


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def report_error(
    error: BaseException, *, as_json: bool, kind: str = "error", message: str | None = None
) -> None:
    """One line on stderr and, with --json, {"error": {...}} as the one object on stdout.

    kind is "error" (handled), "usage" or "crash" (an unexpected exception: a bug).
    """
    fields = describe_error(error)
    if message is not None:
        fields["message"] = message
    print(f"error: {fields['message']}", file=sys.stderr)
    if as_json:
        print_json({"error": {**fields, "kind": kind}})


def report_crash(error: BaseException, *, as_json: bool, tool: str) -> int:
    """An exception nobody anticipated: one line naming it as a bug (traceback with EDGETL_DEBUG=1)."""
    if os.environ.get("EDGETL_DEBUG"):
        import traceback

        traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
    first = (str(error).splitlines() or [""])[0]
    report_error(
        error,
        as_json=as_json,
        kind="crash",
        message=f"internal error in {tool} ({type(error).__name__}: {first}); this is a bug, please "
        "report it (EDGETL_DEBUG=1 shows the traceback)",
    )
    return EXIT_CRASH

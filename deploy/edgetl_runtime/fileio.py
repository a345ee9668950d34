"""Small file helpers shared by edgetl and the device runtime."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import EXIT_CRASH, EXIT_ERROR, EdgetlError, describe_error


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def list_files(folder: str | os.PathLike, suffixes) -> list[Path]:
    """Files under `folder` (recursive) whose suffix is one of `suffixes` (any case), sorted for
    reproducibility; hidden files and folders skipped."""
    folder = Path(folder)
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in suffixes
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# errno -> what to tell the user: a full or read-only disk is theirs to fix, not a bug in edgetl.
DISK_ERRORS = {
    errno.ENOSPC: "no space left on the device; free space or choose another path",
    errno.EDQUOT: "disk quota exceeded; free space or choose another path",
    errno.EFBIG: "file too large for this file system; choose another path",
    errno.EROFS: "read-only file system; choose a writable path",
    errno.EACCES: "permission denied; choose a path you may write (or read)",
    errno.EPERM: "operation not permitted; choose a path you may write (or read)",
}
UNWRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def disk_error(error: BaseException, path: str | os.PathLike | None = None) -> EdgetlError | None:
    """A handled one-line error for a full, read-only or forbidden disk (naming `path`, else the file
    the error names), or None when `error` is something else."""
    code = getattr(error, "errno", None)
    if not isinstance(error, OSError) or code not in DISK_ERRORS:
        return None
    # a copy's error names the source first; a full or read-only disk is the destination's
    written = code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)
    where = path if path is not None else (error.filename2 if written else None) or error.filename
    subject = f"{where}: " if where is not None else ""
    return EdgetlError(f"{subject}{DISK_ERRORS[code]}", path=where)


def _full_disk(error: Exception, folder: Path, path: Path) -> EdgetlError | None:
    """Writers that wrap ENOSPC in their own exception (safetensors' SafetensorError, torch.save's
    RuntimeError "unexpected pos"): a failed write into a file system with under 1 MiB left."""
    try:
        stat = os.statvfs(folder)
    except (AttributeError, OSError):  # Windows has no statvfs
        return None
    if "os error 28" in str(error) or stat.f_bavail * stat.f_frsize < 1 << 20:
        return EdgetlError(f"{path}: {DISK_ERRORS[errno.ENOSPC]}", path=path)
    return None


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

    Creates a folder `path` (not a file's missing folders); `option` names the flag in the error.
    """
    path = Path(path)
    if folder:
        parent = _prepare(path, option, folder)
    else:
        # a file's missing folders are made when it is written: a command refused later leaves none
        if path.is_dir():
            raise EdgetlError(f"{option} {path}: is a folder; give a file path")
        parent = next(p for p in path.absolute().parents if p.exists())
        if not parent.is_dir():
            raise EdgetlError(f"{option} {path}: {parent} is a file, not a folder; choose another path")
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
    except Exception as e:
        # a disk that fills up mid-write: name the artifact, not the temporary (removed below)
        handled = None if isinstance(e, EdgetlError) else disk_error(e, path) or _full_disk(e, parent, path)
        if handled is None:
            raise
        raise handled from None
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
    """An exception nobody anticipated: one line naming it as a bug (traceback with EDGETL_DEBUG=1).

    A full, read-only or forbidden disk met anywhere (DISK_ERRORS) is no bug: it is reported as a
    handled error naming the file, with EXIT_ERROR.
    """
    handled = disk_error(error)
    if handled is not None:
        report_error(handled, as_json=as_json)
        return EXIT_ERROR
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

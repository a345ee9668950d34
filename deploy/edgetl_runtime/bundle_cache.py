"""Archives opened before, kept extracted: a cold `edgetl-run predict` hashes the archive instead of
inflating and writing it again.

An entry is named by the sha256 of the archive's bytes, so it stands only for those exact bytes, and
it is written only after a full extraction passed every check `bundle.extract_to` makes. A hit is
then opened the way a bundle folder is: every file hashed against the manifest, nothing extra, and
the signature checked against the trusted keys of this call. A hit is as safe as that folder, and an
entry that no longer passes is thrown away and the archive extracted afresh.

The cache is `$EDGETL_RUNTIME_CACHE`, else `$XDG_CACHE_HOME/edgetl-runtime/bundles`, else
`~/.cache/edgetl-runtime/bundles`; `EDGETL_RUNTIME_CACHE=off` turns it off. A cache that cannot be
made or written is skipped: the archive is extracted to a temporary folder as without one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

CACHE_ENV = "EDGETL_RUNTIME_CACHE"
# Bundles kept; a device runs one or two, and each entry is a whole extracted bundle.
KEEP = 4
_STAGING = ".staging-"


def cache_dir() -> Path | None:
    """The cache folder, made private to this user if new; None when it is off or cannot be made."""
    setting = os.environ.get(CACHE_ENV, "")
    if setting.lower() in ("off", "0", "no", "false"):
        return None
    if setting:
        folder = Path(setting)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        folder = Path(base) / "edgetl-runtime" / "bundles"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        return None
    return folder if os.access(folder, os.W_OK | os.X_OK) else None


def archive_digest(archive: Path) -> str:
    h = hashlib.sha256()
    with open(archive, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def find_entry(folder: Path, digest: str) -> Path | None:
    entry = folder / digest
    if entry.is_dir() and not entry.is_symlink():
        os.utime(entry)  # most recently used: the last to be evicted
        return entry
    return None


def discard_entry(entry: Path) -> None:
    """Take an entry out of use at once (a rename), then delete it."""
    doomed = entry.with_name(f"{_STAGING}{entry.name}-{os.getpid()}")
    try:
        entry.rename(doomed)
    except OSError:
        return
    shutil.rmtree(doomed, ignore_errors=True)


def new_staging(folder: Path) -> Path:
    """A folder to extract into: in the cache, or (cache full or gone) in the temp folder, not kept."""
    try:
        return Path(tempfile.mkdtemp(prefix=_STAGING, dir=folder))
    except OSError:
        return Path(tempfile.mkdtemp(prefix=_STAGING))


def keep_entry(folder: Path, staging: Path, archive: Path, digest: str) -> Path:
    """Publish a verified extraction under its digest; returns where it lives. Another process that
    published the same archive first wins, and this staging folder is the one used and dropped. An
    archive whose bytes changed while it was extracted is used but not kept: the entry would stand
    for bytes it was not made from."""
    entry = folder / digest
    if archive_digest(archive) != digest:
        return staging
    try:
        staging.rename(entry)
    except OSError:
        return staging
    evict_old(folder, keep=KEEP)
    return entry


def is_staging(path: Path) -> bool:
    return path.name.startswith(_STAGING)


def evict_old(folder: Path, *, keep: int) -> None:
    """Keep the `keep` most recently used entries, and drop what crashed extractions left an hour ago."""
    entries, now = [], time.time()
    for path in folder.iterdir():
        try:
            mtime = path.stat().st_mtime
        except OSError:  # removed meanwhile by another process
            continue
        if is_staging(path):
            if now - mtime > 3600:
                shutil.rmtree(path, ignore_errors=True)
        elif path.is_dir():
            entries.append((mtime, path))
    for _, old in sorted(entries, reverse=True)[keep:]:
        discard_entry(old)

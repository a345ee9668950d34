"""Deploy bundles on disk: a folder, or a reproducible .tar.gz of that folder's files.

Loading verifies every file against the manifest's sha256 and refuses anything else; extraction
reads member data itself (never ``tarfile.extract``) and accepts only plain files with plain names
that the manifest lists, so an archive cannot write outside its folder, plant links or devices, or
smuggle in extra files. Extraction is bounded: a member larger than the manifest says, or than the
total cap, is refused from its tar header before a byte of it is written. A folder is held to the
same rules (no extra files, no links). Nothing here unpickles.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import struct
import tarfile
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from . import bundle_cache
from .errors import BundleError
from .fileio import atomic_output, sha256_file
from .manifest import MANIFEST, Manifest
from .signing import SIGNATURE, TrustedKey, check_signature

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")
# The gzip header `write_archive` emits: no name, mtime 0, max compression, OS unknown. Checked on
# read because gzip's CRC does not cover the header, and a changed byte must never pass unnoticed.
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
_MEMBER_MODE = 0o644
# Largest bundle (all files together) extraction writes; far above any edge model, far below a disk.
MAX_BUNDLE_BYTES = 2 << 30
# Archives list README.md and labels.txt before manifest.json (sorted names): those few small files are
# all that is written before the manifest's sizes are known.
_BEFORE_MANIFEST_BYTES = 16 << 20
_SIGNATURE_BYTES = 4096
# tar headers, end-of-archive blocks and record padding on top of the files' bytes
_TAR_OVERHEAD = 1 << 20


@dataclass(frozen=True)
class OpenBundle:
    """A verified bundle ready to read: `root` holds its files (a temporary folder for an archive)."""

    source: Path
    root: Path
    manifest: Manifest
    signer: str | None = None  # the trusted key id that verified the signature, when trust is configured
    signed: bool = False

    def file(self, name: str) -> Path:
        return self.root / name


def is_archive(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(ARCHIVE_SUFFIXES)


def _check_name(name: str, where: str) -> None:
    """Bundle files are plain names in the bundle's top folder; refuse anything that could escape it."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name or ":" in name:
        raise BundleError(
            f"{where}: unsafe file name {name!r} (absolute, nested or '..'); refusing the bundle"
        )


def verify_files(root: Path, manifest: Manifest, source: str | os.PathLike) -> None:
    for entry in manifest.all_files:
        _check_name(entry.path, str(source))
        path = root / entry.path
        if path.is_symlink() or not path.is_file():
            raise BundleError(
                f"{source}: {entry.path} listed in the manifest is missing or not a regular file"
            )
        if path.stat().st_size != entry.size or sha256_file(path) != entry.sha256:
            raise BundleError(
                f"{source}: {entry.path} was modified (sha256 differs from the manifest); "
                "refusing the bundle, rebuild it with `edgetl package`"
            )


def read_manifest(root: Path, source: str | os.PathLike | None = None) -> Manifest:
    source = source or root
    path = root / MANIFEST
    if path.is_symlink() or not path.is_file():
        raise BundleError(f"{source}: no {MANIFEST}; not an edgetl bundle (build one with `edgetl package`)")
    try:
        return Manifest.from_json(path.read_bytes())
    except BundleError as e:
        raise BundleError(f"{source}: {e}") from None


def verify_bundle(folder: str | os.PathLike) -> Manifest:
    """Check a bundle folder against its manifest; returns the manifest or raises BundleError."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BundleError(
            f"{folder}: no such bundle folder (give a folder or a .tar.gz from `edgetl package`)"
        )
    manifest = read_manifest(folder)
    check_no_extras(folder, manifest, folder)
    verify_files(folder, manifest, folder)
    return manifest


def check_no_extras(root: Path, manifest: Manifest, source: str | os.PathLike) -> None:
    """Only the manifest, its signature and the files it lists; no links, no folders, nothing else."""
    allowed = {MANIFEST, SIGNATURE} | {entry.path for entry in manifest.all_files}
    for path in sorted(root.iterdir()):
        if path.is_symlink():
            raise BundleError(f"{source}: {path.name} is a symbolic link; refusing the bundle")
        if not path.is_file():
            raise BundleError(f"{source}: {path.name} is not a regular file; refusing the bundle")
    extra = sorted({p.name for p in root.iterdir()} - allowed)
    if extra:
        raise BundleError(f"{source}: files not in the manifest ({', '.join(extra)}); refusing the bundle")


def write_archive(folder: str | os.PathLike, out: str | os.PathLike, mtime: int) -> Path:
    """A byte-reproducible tar.gz of a bundle folder: sorted members, fixed mtime/owner/mode, gzip mtime 0.

    The gzip stream is framed here (header, raw deflate, CRC trailer) so its bytes do not depend on
    the Python version's gzip module.
    """
    folder, out = Path(folder), Path(out)
    with tempfile.SpooledTemporaryFile(max_size=64 << 20) as tar_bytes:
        with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for path in sorted(folder.iterdir(), key=lambda p: p.name):
                info = tarfile.TarInfo(path.name)
                info.size, info.mtime, info.mode = path.stat().st_size, mtime, _MEMBER_MODE
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                with open(path, "rb") as f:
                    tar.addfile(info, f)
        tar_bytes.seek(0)
        write_gzip(tar_bytes, out)
    return out


def write_gzip(stream: BinaryIO, out: str | os.PathLike) -> Path:
    """Gzip a stream into `out` atomically with the fixed header bundle archives use."""
    with atomic_output(out) as tmp, open(tmp, "wb") as f:
        deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        crc, size = 0, 0
        f.write(_GZIP_HEADER)
        while block := stream.read(1 << 20):
            crc, size = zlib.crc32(block, crc), size + len(block)
            f.write(deflate.compress(block))
        f.write(deflate.flush())
        f.write(struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF))
    os.chmod(out, 0o644)
    return Path(out)


class _BoundedReader:
    """Decompressed bytes, at most `limit` of them: a gzip bomb costs neither disk nor unbounded time."""

    def __init__(self, stream: BinaryIO, limit: int, archive: Path) -> None:
        self.stream, self.left, self.archive = stream, limit, archive

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(self.left + 1 if size < 0 else min(size, self.left + 1))
        self.left -= len(data)
        if self.left < 0:
            raise BundleError(f"{self.archive}: expands beyond the size cap; refusing the bundle")
        return data


def _member_budget(
    name: str, size: int, sizes: dict[str, int] | None, written: int, archive: Path, cap: int
) -> None:
    """Refuse a member from its header, before writing it: unlisted, not the manifest's size, or too big."""
    if name == SIGNATURE:
        if size > _SIGNATURE_BYTES:
            raise BundleError(f"{archive}: {SIGNATURE} of {size} bytes is no signature; refusing the bundle")
    elif sizes is not None:
        if name not in sizes:
            raise BundleError(f"{archive}: member {name!r} is not in the manifest; refusing the bundle")
        if size != sizes[name]:
            raise BundleError(
                f"{archive}: member {name!r} is {size} bytes, the manifest says {sizes[name]}; refusing the bundle"
            )
    elif written + size > _BEFORE_MANIFEST_BYTES:
        raise BundleError(
            f"{archive}: {written + size} bytes before manifest.json (at most {_BEFORE_MANIFEST_BYTES}); "
            "not a bundle written by `edgetl package`, refusing it"
        )
    if written + size > cap:
        raise BundleError(
            f"{archive}: member {name!r} ({size} bytes) takes the bundle past the cap of {cap} bytes; "
            "refusing it before writing"
        )


def _extract_members(archive: Path, dest: Path, cap: int) -> None:
    """Stream the archive's members into `dest`, refusing anything but plain, plainly named files,
    and anything larger than the manifest or `cap` allows."""
    with open(archive, "rb") as raw:
        if raw.read(len(_GZIP_HEADER)) != _GZIP_HEADER:
            raise BundleError(
                f"{archive}: not a bundle archive written by `edgetl package` (gzip header differs); "
                "refusing it"
            )
        raw.seek(0)
        written, sizes = 0, None
        try:
            with gzip.GzipFile(fileobj=raw, mode="rb") as gz:
                bounded = _BoundedReader(gz, cap + _TAR_OVERHEAD, archive)
                with tarfile.open(fileobj=bounded, mode="r|") as tar:
                    for member in tar:
                        _check_name(member.name, str(archive))
                        if not member.isreg():
                            kind = "link" if member.issym() or member.islnk() else "non-file entry"
                            raise BundleError(
                                f"{archive}: member {member.name!r} is a {kind}; refusing the bundle"
                            )
                        target = dest / member.name
                        if target.exists():
                            raise BundleError(
                                f"{archive}: member {member.name!r} appears twice; refusing the bundle"
                            )
                        _member_budget(member.name, member.size, sizes, written, archive, cap)
                        with tar.extractfile(member) as src, open(target, "xb") as out:
                            shutil.copyfileobj(src, out)
                        written += member.size
                        if member.name == MANIFEST:
                            listed = read_manifest(dest, archive).all_files
                            sizes = {e.path: e.size for e in listed}
                # tarfile stops at the end-of-archive marker; reading on makes gzip check its CRC
                while bounded.read(1 << 20):
                    pass
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise BundleError(f"{archive}: damaged archive ({type(e).__name__}: {e}); refusing it") from None


def extract_to(archive: Path, dest: Path, *, max_bytes: int = MAX_BUNDLE_BYTES) -> Manifest:
    """Extract into an existing empty folder and verify; the folder is left partial on failure."""
    _extract_members(archive, dest, max_bytes)
    manifest = read_manifest(dest, archive)
    check_no_extras(dest, manifest, archive)
    verify_files(dest, manifest, archive)
    return manifest


def extract_bundle(
    archive: str | os.PathLike, out: str | os.PathLike, *, max_bytes: int = MAX_BUNDLE_BYTES
) -> Manifest:
    """Unpack a bundle archive into the folder `out` (created; must not exist), verified, atomically."""
    archive, out = Path(archive), Path(out)
    if out.exists():
        raise BundleError(f"{out}: already exists; choose a new folder to extract the bundle into")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        manifest = extract_to(archive, staging, max_bytes=max_bytes)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


@contextlib.contextmanager
def open_bundle(
    path: str | os.PathLike,
    *,
    trusted: Sequence[TrustedKey] = (),
    max_bytes: int = MAX_BUNDLE_BYTES,
) -> Iterator[OpenBundle]:
    """Verify a bundle folder or archive and yield it; an archive lives in a temp folder meanwhile.

    With `trusted` keys, the manifest must carry a signature by one of them (see signing.py).
    """
    path = Path(path)
    if not path.exists():
        raise BundleError(f"{path}: no such bundle; build one with `edgetl package RUN --out {path}`")
    if path.is_dir():
        yield _checked(path, path, verify_bundle(path), trusted)
        return
    if not is_archive(path):
        raise BundleError(f"{path}: a bundle is a folder or a .tar.gz written by `edgetl package`")
    cache = bundle_cache.cache_dir()
    if cache is None:
        with tempfile.TemporaryDirectory(prefix="edgetl-bundle-") as tmp:
            manifest = extract_to(path, Path(tmp), max_bytes=max_bytes)
            yield _checked(path, Path(tmp), manifest, trusted)
        return
    root, manifest = _open_cached(path, cache, max_bytes)
    try:
        yield _checked(path, root, manifest, trusted)
    finally:
        if bundle_cache.is_staging(root):
            shutil.rmtree(root, ignore_errors=True)


def _open_cached(archive: Path, cache: Path, max_bytes: int) -> tuple[Path, Manifest]:
    """The archive's verified files in the cache (see bundle_cache.py), extracted there on a miss."""
    digest = bundle_cache.archive_digest(archive)
    entry = bundle_cache.find_entry(cache, digest)
    if entry is not None:
        try:
            manifest = read_manifest(entry, archive)
            if sum(e.size for e in manifest.all_files) > max_bytes:
                raise BundleError(f"{archive}: its files take more than the cap of {max_bytes} bytes")
            check_no_extras(entry, manifest, archive)
            verify_files(entry, manifest, archive)
            return entry, manifest
        except BundleError:  # changed on disk since it was kept, or kept under a larger cap
            bundle_cache.discard_entry(entry)
    staging = bundle_cache.new_staging(cache)
    try:
        manifest = extract_to(archive, staging, max_bytes=max_bytes)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return bundle_cache.keep_entry(cache, staging, archive, digest), manifest


def _checked(source: Path, root: Path, manifest: Manifest, trusted: Sequence[TrustedKey]) -> OpenBundle:
    signer = check_signature(root, str(source), trusted)
    return OpenBundle(source, root, manifest, signer=signer, signed=(root / SIGNATURE).is_file())


def bundle_sha256(path: str | os.PathLike) -> str:
    """The sha256 of an archive, or of a folder's manifest (which pins every other file)."""
    path = Path(path)
    return sha256_file(path / MANIFEST if path.is_dir() else path)

"""Archive members that try to leave the extraction folder, wherever they sit in the archive, and
a changed byte in any bundle file, folder or archive: refused, nothing written outside."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from cliprobe import assert_json_error, assert_one_line, invoke, member, tar_gz

from edgetl_runtime import BundleError
from edgetl_runtime.bundle import extract_bundle, write_archive
from edgetl_runtime.errors import EXIT_ERROR
from edgetl_runtime.manifest import MANIFEST, Manifest


@pytest.mark.parametrize("where", ["../escaped.txt", "absolute"])
@pytest.mark.parametrize("first", [True, False], ids=["before-manifest", "after-manifest"])
def test_a_member_naming_a_path_outside_is_refused_wherever_it_sits(bundle, tmp_path, where, first):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    name = where if where != "absolute" else str(scratch / "absolute.txt")
    manifest = (bundle / MANIFEST).read_bytes()
    listed = (member(MANIFEST, len(manifest)), io.BytesIO(manifest))
    evil = (member(name, 5), io.BytesIO(b"owned"))
    archive = tar_gz(tmp_path / "evil.tar.gz", [evil, listed] if first else [listed, evil])
    with pytest.raises(BundleError, match="unsafe file name"):
        extract_bundle(archive, scratch / "out")
    assert list(scratch.iterdir()) == [] and not (tmp_path / "escaped.txt").exists()
    outcome = invoke("edgetl-run", ["info", str(archive), "--json"])
    assert_one_line(outcome, EXIT_ERROR, "unsafe")
    assert_json_error(outcome, "unsafe")


def _flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size: only the sha256 can tell
    path.write_bytes(bytes(data))


def test_a_changed_byte_in_any_bundle_file_is_refused(bundle, tmp_path):
    names = [e.path for e in Manifest.from_json((bundle / MANIFEST).read_bytes()).all_files]
    assert len(names) >= 4  # both models and the files beside them
    for name in names:
        folder = Path(shutil.copytree(bundle, tmp_path / f"folder-{name}"))
        _flip_one_byte(folder / name)
        outcome = invoke("edgetl-run", ["info", str(folder), "--json"])
        assert_one_line(outcome, EXIT_ERROR, f"{name} was modified")
        archive = write_archive(folder, tmp_path / f"{name}.tar.gz", mtime=0)
        outcome = invoke("edgetl-run", ["info", str(archive), "--json"])
        assert_one_line(outcome, EXIT_ERROR, f"{name} was modified")
        assert_json_error(outcome, "sha256 differs from the manifest")


def test_an_archive_not_framed_by_edgetl_or_with_a_huge_signature_is_refused(bundle, tmp_path):
    import tarfile

    from cliprobe import Zeros

    from edgetl_runtime.signing import SIGNATURE

    foreign = tmp_path / "foreign.tar.gz"
    with tarfile.open(foreign, "w:gz") as tar:  # Python's own gzip framing: a header edgetl never writes
        for path in sorted(bundle.iterdir()):
            tar.add(path, arcname=path.name)
    assert_one_line(invoke("edgetl-run", ["info", str(foreign), "--json"]), EXIT_ERROR, "gzip header differs")
    huge = tar_gz(tmp_path / "huge.tar.gz", [(member(SIGNATURE, 1 << 20), Zeros(1 << 20))])
    assert_one_line(invoke("edgetl-run", ["info", str(huge), "--json"]), EXIT_ERROR, "is no signature")


def test_extracting_a_good_archive_returns_its_verified_manifest(bundle, tmp_path):
    archive = write_archive(bundle, tmp_path / "good.tar.gz", mtime=0)
    manifest = extract_bundle(archive, tmp_path / "out")
    assert manifest == Manifest.from_json((bundle / MANIFEST).read_bytes())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in bundle.iterdir())


def test_a_member_that_appears_twice_is_refused_by_name(bundle, tmp_path):
    manifest = (bundle / MANIFEST).read_bytes()
    listed = [(member(MANIFEST, len(manifest)), io.BytesIO(manifest)) for _ in range(2)]
    archive = tar_gz(tmp_path / "twice.tar.gz", listed)
    with pytest.raises(BundleError, match=r"member 'manifest\.json' appears twice; refusing the bundle"):
        extract_bundle(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()

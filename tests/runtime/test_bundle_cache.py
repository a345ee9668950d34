"""The runtime's cache of extracted archives: a hit is the bundle those exact bytes extracted to, checked
like a bundle folder on every open; a refused or changed archive never becomes an entry."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from edgetl.bundler.package import build_bundle
from edgetl_runtime import BundleError, Predictor
from edgetl_runtime.bundle import open_bundle
from edgetl_runtime.bundle_cache import CACHE_ENV, evict_old
from edgetl_runtime.preprocess import list_images
from edgetl_runtime.signing import generate_keypair, load_trusted_keys


@pytest.fixture(scope="module")
def archive(tiny_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cached")
    return build_bundle(tiny_run, out / "bundle.tar.gz").path


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(folder))
    return folder


def entries(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.is_dir() else []


def test_an_archive_opened_twice_is_extracted_once_and_predicts_the_same(archive, cache, digits_dir):
    images = list_images(digits_dir / "val")[:4]
    first = Predictor.from_bundle(archive).predict(images)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert entries(cache) == [digest]
    model = next((cache / digest).glob("*.onnx"))
    written = model.stat().st_mtime_ns
    again = Predictor.from_bundle(archive).predict(images)
    assert again == first and all(p.ok for p in first)
    assert model.stat().st_mtime_ns == written  # read from the entry, not written again


def test_an_entry_changed_on_disk_is_thrown_away_and_extracted_afresh(archive, cache):
    with open_bundle(archive) as bundle:
        manifest = bundle.manifest
    entry = cache / entries(cache)[0]
    model = entry / manifest.models[0].path
    model.write_bytes(model.read_bytes()[:-1] + b"\x00")
    with open_bundle(archive) as bundle:
        assert bundle.root == entry
    assert hashlib.sha256(model.read_bytes()).hexdigest() == manifest.models[0].sha256
    (entry / "planted.txt").write_text("not in the manifest")
    with open_bundle(archive):
        pass
    assert not (entry / "planted.txt").exists()


def test_a_refused_archive_leaves_nothing_in_the_cache(archive, cache, tmp_path):
    damaged = tmp_path / "damaged.tar.gz"
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"damaged\.tar\.gz"):
        open_bundle(damaged).__enter__()
    assert entries(cache) == []


def test_trust_is_checked_on_every_open_of_a_cached_archive(tiny_run, cache, tmp_path):
    release, other = (generate_keypair(tmp_path / name)[0] for name in ("release.key", "other.key"))
    signed = build_bundle(tiny_run, tmp_path / "signed.tar.gz", sign=release).path
    with open_bundle(signed, trusted=load_trusted_keys([f"{release}.pub"])) as bundle:
        assert bundle.signer
    assert len(entries(cache)) == 1
    with pytest.raises(BundleError, match="does not verify with any trusted key"):
        open_bundle(signed, trusted=load_trusted_keys([f"{other}.pub"])).__enter__()


def test_a_cache_turned_off_or_unusable_writes_nothing_and_still_opens(archive, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, "off")
    with open_bundle(archive) as bundle:
        assert bundle.manifest.models
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(CACHE_ENV, str(blocker / "cache"))  # cannot be made: a file is in the way
    with open_bundle(archive) as bundle:
        assert bundle.manifest.models
    assert blocker.read_text() == ""


def test_eviction_keeps_the_most_recently_used_entries(tmp_path):
    for age, name in enumerate(["newest", "middle", "oldest"]):
        (tmp_path / name).mkdir()
        os.utime(tmp_path / name, (1e9 - age * 100, 1e9 - age * 100))
    evict_old(tmp_path, keep=2)
    assert entries(tmp_path) == ["middle", "newest"]

"""Signed bundles: ed25519 over the manifest, which pins every file; trust configured on the device."""

from __future__ import annotations

import dataclasses
import json
import shutil
import stat
from pathlib import Path

import pytest
from cliprobe import assert_json_error, assert_one_line, invoke

from edgetl.bundler.package import build_bundle
from edgetl_runtime import BundleError, Predictor
from edgetl_runtime.bundle import open_bundle
from edgetl_runtime.errors import EXIT_ERROR
from edgetl_runtime.manifest import MANIFEST, Manifest
from edgetl_runtime.signing import SIGNATURE, TRUSTED_KEYS_ENV, generate_keypair, load_trusted_keys


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> tuple[Path, Path]:
    """Two key pairs: the release key, and an attacker's."""
    folder = tmp_path_factory.mktemp("keys")
    return generate_keypair(folder / "release.key")[0], generate_keypair(folder / "other.key")[0]


@pytest.fixture(scope="module")
def signed(tiny_run, keys, tmp_path_factory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("signed")
    folder = build_bundle(tiny_run, out / "bundle", sign=keys[0]).path
    archive = build_bundle(tiny_run, out / "bundle.tar.gz", sign=keys[0]).path
    return folder, archive


def pub(key: Path) -> str:
    return str(key) + ".pub"


def test_keygen_writes_a_private_and_a_public_key_and_never_overwrites(tmp_path):
    key = tmp_path / "k"
    outcome = invoke("edgetl", ["keygen", "--out", str(key), "--json"])
    assert outcome.code == 0, outcome.err
    summary = json.loads(outcome.out)
    assert summary["public_key"] == pub(key) and len(summary["key_id"]) == 16
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in key.read_bytes() and b"PUBLIC KEY" in Path(pub(key)).read_bytes()
    before = key.read_bytes()
    again = invoke("edgetl", ["keygen", "--out", str(key), "--json"])
    assert_one_line(again, EXIT_ERROR, "already exists")
    assert key.read_bytes() == before


@pytest.mark.parametrize("which", [0, 1])
def test_signed_bundle_verifies_with_its_key_and_is_refused_with_another(signed, keys, which):
    bundle = signed[which]
    ok = invoke("edgetl-run", ["info", str(bundle), "--trust", pub(keys[0]), "--json"])
    assert ok.code == 0, ok.err
    info = json.loads(ok.out)
    assert info["signed"] is True and info["signer"] == load_trusted_keys([pub(keys[0])])[0].key_id
    wrong = invoke("edgetl-run", ["info", str(bundle), "--trust", pub(keys[1]), "--json"])
    assert_one_line(wrong, EXIT_ERROR, "does not verify with any trusted key")
    assert_json_error(wrong, "refusing the bundle")
    # without trust configured: accepted as before, and said to be signed but unchecked
    plain = invoke("edgetl-run", ["info", str(bundle)])
    assert plain.code == 0 and "signed (no trusted key configured" in plain.out


def test_unsigned_bundle_is_refused_when_trust_is_configured(
    tiny_run, digits_dir, keys, tmp_path, monkeypatch
):
    unsigned = build_bundle(tiny_run, tmp_path / "unsigned.tar.gz").path
    plain = invoke("edgetl-run", ["info", str(unsigned)])
    assert plain.code == 0 and "signature   unsigned" in plain.out
    refused = invoke("edgetl-run", ["info", str(unsigned), "--trust", pub(keys[0]), "--json"])
    assert_one_line(refused, EXIT_ERROR, "unsigned bundle, and trusted keys are configured")
    image = next((digits_dir / "val").rglob("*.png"))  # a real image: only the signature can refuse it
    args = ["predict", str(unsigned), str(image), "--json"]
    assert invoke("edgetl-run", args).code == 0  # without trust configured it predicts
    monkeypatch.setenv(TRUSTED_KEYS_ENV, pub(keys[0]))  # a device's standing configuration
    assert_one_line(invoke("edgetl-run", args), EXIT_ERROR, "unsigned bundle")


def test_rewritten_manifest_with_a_recomputed_digest_is_refused_by_the_signature(signed, keys, tmp_path):
    folder = Path(shutil.copytree(signed[0], tmp_path / "b"))
    manifest = Manifest.from_json((folder / MANIFEST).read_bytes())
    relabelled = dataclasses.replace(manifest, labels=tuple(reversed(manifest.labels)))
    (folder / MANIFEST).write_text(relabelled.to_json(), encoding="utf-8")
    with open_bundle(folder) as bundle:  # hashes alone cannot see it: the digest was recomputed
        assert bundle.manifest.labels == relabelled.labels
    with pytest.raises(BundleError, match="does not verify"):
        Predictor.from_bundle(folder, trusted=load_trusted_keys([pub(keys[0])]))


def test_a_trusted_keys_file_may_hold_several_keys(signed, keys, tmp_path):
    ring = tmp_path / "trusted.pem"
    ring.write_text(Path(pub(keys[1])).read_text() + Path(pub(keys[0])).read_text())
    assert len(load_trusted_keys([ring])) == 2
    ok = invoke("edgetl-run", ["info", str(signed[1]), "--trust", str(ring), "--json"])
    assert ok.code == 0, ok.err


def test_signed_archives_stay_reproducible(tiny_run, keys, signed, tmp_path, monkeypatch):
    import tarfile

    again = build_bundle(tiny_run, tmp_path / "again.tar.gz", sign=keys[0]).path
    assert again.read_bytes() == signed[1].read_bytes()
    with tarfile.open(again) as archive:  # the signature is dated like every other member
        assert len({m.mtime for m in archive.getmembers()}) == 1 and SIGNATURE in archive.getnames()
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")  # a date no file here has by chance
    folder = build_bundle(tiny_run, tmp_path / "dated", sign=keys[0]).path
    assert {p.stat().st_mtime for p in folder.iterdir()} == {1700000000}  # and in a bundle folder
    assert (signed[0] / SIGNATURE).is_file()


def test_bad_signing_key_is_one_line_and_leaves_no_bundle(tiny_run, keys, tmp_path):
    out = tmp_path / "b.tar.gz"
    outcome = invoke(
        "edgetl", ["package", str(tiny_run), "--out", str(out), "--sign", pub(keys[0]), "--json"]
    )
    assert_one_line(outcome, EXIT_ERROR, "not an unencrypted PEM private key")
    assert_json_error(outcome, "--sign", option="--sign")
    assert not out.exists()
    missing = tmp_path / "release.key"
    outcome = invoke(
        "edgetl", ["package", str(tiny_run), "--out", str(out), "--sign", str(missing), "--json"]
    )
    assert_one_line(outcome, EXIT_ERROR, f"--sign {missing}: no such key file; make one with `edgetl keygen")
    assert not out.exists()


def test_malformed_signature_file_is_refused(signed, keys, tmp_path):
    folder = Path(shutil.copytree(signed[0], tmp_path / "b"))
    (folder / SIGNATURE).write_text("garbage")
    outcome = invoke("edgetl-run", ["info", str(folder), "--trust", pub(keys[0])])
    assert_one_line(outcome, EXIT_ERROR, f"{SIGNATURE} is malformed")


def test_a_trusted_key_file_that_is_missing_or_holds_no_ed25519_key_is_refused(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from edgetl.errors import EdgetlError

    with pytest.raises(EdgetlError, match="no such public-key file"):
        load_trusted_keys([tmp_path / "missing.pub"])
    (tmp_path / "empty.pub").write_text("\n")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    (tmp_path / "rsa.pub").write_bytes(
        rsa_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    for name in ("empty.pub", "rsa.pub"):
        with pytest.raises(EdgetlError, match="holds no ed25519 public key"):
            load_trusted_keys([tmp_path / name])
    private, _, _ = generate_keypair(tmp_path / "release")  # the private key given where the .pub goes
    with pytest.raises(EdgetlError, match=r"not a PEM public key \(ValueError\); give KEY\.pub"):
        load_trusted_keys([private])


def test_a_signature_file_naming_another_algorithm_is_malformed(signed, keys, tmp_path):
    folder = Path(shutil.copytree(signed[0], tmp_path / "b"))
    body = json.loads((folder / SIGNATURE).read_text())
    (folder / SIGNATURE).write_text(json.dumps({**body, "algorithm": "rsa-pss-sha256"}))
    outcome = invoke("edgetl-run", ["info", str(folder), "--trust", pub(keys[0])])
    assert_one_line(outcome, EXIT_ERROR, f"{SIGNATURE} is malformed")

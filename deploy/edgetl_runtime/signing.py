"""Ed25519 signatures over a bundle's manifest (which pins every other file by sha256).

Hashes catch corruption; a signature catches someone who rewrites the manifest and recomputes its
digest. `cryptography` is optional in the runtime (extra `sign`) and imported only when a key is
used, so an unsigned workflow needs nothing beyond numpy, pillow and onnxruntime.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import BundleError, EdgetlError
from .fileio import atomic_output
from .manifest import MANIFEST

SIGNATURE = "manifest.sig"
ALGORITHM = "ed25519"
# Devices configure trust once: one or more public-key files, separated like PATH.
TRUSTED_KEYS_ENV = "EDGETL_TRUSTED_KEYS"


class SignatureError(BundleError):
    """A bundle is unsigned, or signed by no trusted key, while trust is configured."""


@dataclass(frozen=True)
class TrustedKey:
    key_id: str
    source: str
    key: object  # cryptography's Ed25519PublicKey


def _crypto():
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise EdgetlError(
            "signed bundles need the `cryptography` package: pip install 'edgetl-runtime[sign]'"
        ) from None
    return serialization, ed25519, InvalidSignature


def key_id(public_key) -> str:
    """A short, stable name for a public key: the first 16 hex digits of the sha256 of its raw bytes."""
    serialization, _, _ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_keypair(out: str | os.PathLike) -> tuple[Path, Path, str]:
    """Write a new private key to `out` (PEM, mode 0600) and its public key to `out`.pub."""
    serialization, ed25519, _ = _crypto()
    out = Path(out)
    pub = out.with_name(out.name + ".pub")
    for path in (out, pub):
        if path.exists():
            raise EdgetlError(f"--out {path}: already exists; a key is never overwritten, choose a new path")
    private = ed25519.Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with atomic_output(pub, "--out") as tmp:
        tmp.write_bytes(public_pem)
    with atomic_output(out, "--out") as tmp:
        tmp.write_bytes(private_pem)
    os.chmod(out, 0o600)  # a private key is readable by its owner only
    return out, pub, key_id(private.public_key())


def load_private_key(path: str | os.PathLike, option: str = "--sign"):
    serialization, ed25519, _ = _crypto()
    path = Path(path)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise EdgetlError(
            f"{option} {path}: no such key file; make one with `edgetl keygen --out {path}`"
        ) from None
    except (OSError, ValueError, TypeError) as e:
        raise EdgetlError(
            f"{option} {path}: not an unencrypted PEM private key ({type(e).__name__}); "
            "give the file `edgetl keygen --out` wrote (not the .pub)"
        ) from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise EdgetlError(f"{option} {path}: not an ed25519 key; make one with `edgetl keygen`")
    return key


def _pem_blocks(text: str) -> list[str]:
    end = "-----END PUBLIC KEY-----"
    return [block.strip() + "\n" + end + "\n" for block in text.split(end) if block.strip()]


def load_trusted_keys(paths: Sequence[str | os.PathLike], option: str = "--trust") -> tuple[TrustedKey, ...]:
    """Public keys from PEM files; a file may hold several keys (a trusted-keys file)."""
    serialization, ed25519, _ = _crypto()
    keys = []
    for path in map(Path, paths):
        try:
            text = path.read_text(encoding="ascii")
            loaded = [serialization.load_pem_public_key(b.encode("ascii")) for b in _pem_blocks(text)]
        except FileNotFoundError:
            raise EdgetlError(f"{option} {path}: no such public-key file") from None
        except (OSError, ValueError, UnicodeDecodeError) as e:
            raise EdgetlError(
                f"{option} {path}: not a PEM public key ({type(e).__name__}); give KEY.pub from `edgetl keygen`"
            ) from None
        if not loaded or not all(isinstance(k, ed25519.Ed25519PublicKey) for k in loaded):
            raise EdgetlError(
                f"{option} {path}: holds no ed25519 public key; give KEY.pub from `edgetl keygen`"
            )
        keys += [TrustedKey(key_id(k), str(path), k) for k in loaded]
    return tuple(keys)


def trusted_keys_from(paths: Sequence[str | os.PathLike] | None) -> tuple[TrustedKey, ...]:
    """--trust files if given, else those named by EDGETL_TRUSTED_KEYS; empty means no trust configured."""
    if paths:
        return load_trusted_keys(paths)
    env = [p for p in os.environ.get(TRUSTED_KEYS_ENV, "").split(os.pathsep) if p]
    return load_trusted_keys(env, option=TRUSTED_KEYS_ENV) if env else ()


def sign_manifest(folder: str | os.PathLike, private_key, mtime: int) -> None:
    """Write SIGNATURE beside the manifest of the bundle folder, dated `mtime` like its other files.

    Ed25519 signatures are deterministic, so a signed archive stays byte-reproducible.
    """
    folder = Path(folder)
    signature = private_key.sign((folder / MANIFEST).read_bytes())
    kid = key_id(private_key.public_key())
    body = {"algorithm": ALGORITHM, "key_id": kid, "signature": base64.b64encode(signature).decode("ascii")}
    path = folder / SIGNATURE
    path.write_text(json.dumps(body, sort_keys=True) + "\n", encoding="ascii")
    os.utime(path, (mtime, mtime))


def read_signature(root: Path, source: str) -> dict | None:
    """The parsed signature file of a bundle, or None when it is unsigned."""
    path = root / SIGNATURE
    if not path.exists() and not path.is_symlink():
        return None
    try:
        body = json.loads(path.read_text(encoding="ascii"))
        ok = isinstance(body, dict) and body.get("algorithm") == ALGORITHM
        ok = ok and isinstance(body.get("key_id"), str) and isinstance(body.get("signature"), str)
        if ok:
            body["raw"] = base64.b64decode(body["signature"], validate=True)
    except (OSError, ValueError, UnicodeDecodeError):
        ok = False
    if not ok:
        raise SignatureError(f"{source}: {SIGNATURE} is malformed; re-sign with `edgetl package --sign KEY`")
    return body


def check_signature(root: Path, source: str, trusted: Sequence[TrustedKey]) -> str | None:
    """The key id of the trusted key that signed the manifest; None when no trust is configured
    (the bundle may then be unsigned). With trust configured, anything else is refused."""
    body = read_signature(root, source)
    if not trusted:
        return None
    if body is None:
        raise SignatureError(
            f"{source}: unsigned bundle, and trusted keys are configured; "
            "sign it with `edgetl package RUN --sign KEY`"
        )
    _, _, invalid = _crypto()
    data = (root / MANIFEST).read_bytes()
    for key in trusted:
        try:
            key.key.verify(body["raw"], data)
        except invalid:
            continue
        return key.key_id
    raise SignatureError(
        f"{source}: signature (key {body['key_id']}) does not verify with any trusted key "
        f"({', '.join(k.key_id for k in trusted)}); refusing the bundle"
    )

"""Signed models: the coordinator signs every model it sends; a site verifies before loading.

A model's identity is `model_sha256` of its ArrayRecord: every array's name, dtype, shape
and bytes, in order. The coordinator signs, with its Ed25519 model-signing key, the
statement ``medfed-model|<Flower run id>|<model sha256>``, so a signature is valid for that
model in that run only (an old model cannot be replayed into another run). A message's
signatures travel in its ConfigRecord `SIGNATURES`: for each ArrayRecord of the message, by
its name, the signature (hex). A site whose policy names the coordinator's public key
(``[coordinator] signing_public_key`` in site.toml) checks them with `verify_models` and
refuses a model without a valid signature (`ModelSignatureError`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

#: The ConfigRecord of a message holding its models' signatures (ArrayRecord name -> hex).
SIGNATURES = "signatures"
#: Error code of a site's reply refusing a model whose signature does not verify.
MODEL_REJECTED = 401
_STATEMENT = "medfed-model|{run_id}|{sha256}"


class ModelSignatureError(RuntimeError):
    """A model's signature is missing, malformed or does not verify (one line)."""


class SigningKeyError(RuntimeError):
    """A signing key file is missing or not an Ed25519 key (one line, naming the file)."""


def model_sha256(arrays: ArrayRecord) -> str:
    """SHA-256 (hex) of a model's arrays: each array's name, dtype, shape and bytes, in the
    record's order."""
    digest = hashlib.sha256()
    for name, array in arrays.items():
        header = f"{name}|{array.dtype}|{','.join(map(str, array.shape))}|{len(array.data)}|"
        digest.update(header.encode())
        digest.update(array.data)
    return digest.hexdigest()


def write_private_key(
    path: Path,
    key: PrivateKeyTypes,
    private_format: serialization.PrivateFormat = serialization.PrivateFormat.PKCS8,
) -> None:
    """Write ``key`` unencrypted, as PEM in ``private_format`` (PKCS#8 by default; OpenSSH
    for a SuperNode key, the format Flower reads), to a new file ``path``, mode 0600 (never
    overwriting: a key is made once)."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        private_format,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)


def write_signing_key(private_path: Path, public_path: Path) -> Ed25519PrivateKey:
    """Create a new Ed25519 key: the private key as PKCS#8 PEM (`write_private_key`), the
    public key as SubjectPublicKeyInfo PEM. Returns the private key."""
    key = Ed25519PrivateKey.generate()
    write_private_key(private_path, key)
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return key


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in ``path`` (PEM); `SigningKeyError` otherwise."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise SigningKeyError(f"{path}: not a readable PEM private key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{path}: not an Ed25519 key")
    return key


def load_verify_key(path: Path) -> Ed25519PublicKey:
    """The Ed25519 public key in ``path`` (PEM); `SigningKeyError` otherwise."""
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise SigningKeyError(f"{path}: not a readable PEM public key ({exc})") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"{path}: not an Ed25519 key")
    return key


def sign_model(key: Ed25519PrivateKey, run_id: str, sha256: str) -> str:
    """The signature (hex) of the model ``sha256`` in run ``run_id``."""
    return key.sign(_STATEMENT.format(run_id=run_id, sha256=sha256).encode()).hex()


def verify_model(key: Ed25519PublicKey, run_id: str, arrays: ArrayRecord, signature: str) -> str:
    """Check that ``signature`` signs ``arrays`` for run ``run_id``; returns the model's
    SHA-256. `ModelSignatureError` (one line) when it does not."""
    sha256 = model_sha256(arrays)
    try:
        raw = bytes.fromhex(signature)
    except ValueError as exc:
        raise ModelSignatureError("the model's signature is not hex") from exc
    try:
        key.verify(raw, _STATEMENT.format(run_id=run_id, sha256=sha256).encode())
    except InvalidSignature as exc:
        raise ModelSignatureError(
            f"the model with SHA-256 {sha256[:16]}... does not match the coordinator's "
            f"signature for run {run_id}"
        ) from exc
    return sha256


def verify_models(key: Ed25519PublicKey, run_id: str, content: RecordDict) -> dict[str, str]:
    """Check the signature of every ArrayRecord in ``content`` (a message from the
    coordinator of run ``run_id``); returns each model's SHA-256 by record name.
    `ModelSignatureError` (one line) for an unsigned model or a bad signature."""
    signatures = content.get(SIGNATURES)
    checked = {}
    for name, arrays in content.array_records.items():
        signature = signatures.get(name) if isinstance(signatures, ConfigRecord) else None
        if not isinstance(signature, str):
            raise ModelSignatureError(f"model {name!r} is not signed by the coordinator")
        checked[name] = verify_model(key, run_id, arrays, signature)
    return checked

"""Encryption at rest of the site store: AES-256-GCM (authenticated) from `cryptography`.

Every file of ``SITE/store/`` (the manifest, each case's image and mask) is written as
``MAGIC || nonce (12 bytes) || ciphertext and tag``, with the file's path inside the store
as associated data: a file edited, truncated, or swapped for another is detected on
reading (`StoreCryptoError`), never silently used.

The key (32 bytes, hex) comes from the environment variable `STORE_KEY_ENV` if set, or
else from a key file readable only by its owner: ``SITE/store.key`` by default, anywhere
the site chooses with ``[storage] key_file`` in ``site.toml`` (a key beside the data it
protects only guards against copies of the store folder alone; keep it on another volume
or in the environment in production). A wrong key is reported as such, at opening.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

STORE_KEY_ENV = "MEDFED_STORE_KEY"
MAGIC = b"MEDFED-AESGCM-1\n"
NONCE_BYTES = 12
KEY_BYTES = 32
#: A small file encrypted at creation, so that a wrong key is recognised at once.
KEY_CHECK = "key-check"


class StoreCryptoError(RuntimeError):
    """A store file cannot be decrypted: wrong key, or the file was altered."""


class StoreCipher:
    """Encrypts and decrypts the files of one store with one key."""

    def __init__(self, key: bytes, source: str) -> None:
        if len(key) != KEY_BYTES:
            raise StoreCryptoError(f"{source}: the store key must be {KEY_BYTES} bytes")
        self._aead = AESGCM(key)
        self.source = source

    def encrypt(self, data: bytes, name: str) -> bytes:
        """``data`` sealed for the store file ``name`` (its path inside the store)."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        return MAGIC + nonce + self._aead.encrypt(nonce, data, name.encode())

    def decrypt(self, blob: bytes, name: str) -> bytes:
        """The plaintext of the store file ``name``; `StoreCryptoError` if it is not ours,
        was altered, or belongs to another name."""
        if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + NONCE_BYTES + 16:
            raise StoreCryptoError(f"{name}: not an encrypted store file")
        nonce = blob[len(MAGIC) : len(MAGIC) + NONCE_BYTES]
        try:
            return self._aead.decrypt(nonce, blob[len(MAGIC) + NONCE_BYTES :], name.encode())
        except InvalidTag as exc:
            raise StoreCryptoError(
                f"{name}: fails authentication (altered, or encrypted with another key)"
            ) from exc


def load_store_key(key_file: Path) -> tuple[bytes, str]:
    """The store key and where it came from: `STORE_KEY_ENV`, else ``key_file``, which must
    be readable by its owner only. `StoreCryptoError` naming the problem otherwise."""
    from_env = os.environ.get(STORE_KEY_ENV)
    if from_env:
        return _parse_key(from_env, f"${STORE_KEY_ENV}"), f"${STORE_KEY_ENV}"
    try:
        mode = key_file.stat().st_mode
    except FileNotFoundError as exc:
        raise StoreCryptoError(
            f"{key_file}: store key file missing (or set {STORE_KEY_ENV})"
        ) from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise StoreCryptoError(
            f"{key_file}: store key file is accessible to others (mode {stat.filemode(mode)}); "
            "chmod 600 it"
        )
    return _parse_key(key_file.read_text(), str(key_file)), str(key_file)


def create_store_key(key_file: Path) -> None:
    """Write a new random key to ``key_file`` (mode 0600), unless `STORE_KEY_ENV` provides
    one or the file exists."""
    if os.environ.get(STORE_KEY_ENV) or key_file.exists():
        return
    key_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_bytes(KEY_BYTES).hex())


def _parse_key(text: str, source: str) -> bytes:
    try:
        key = bytes.fromhex(text.strip())
    except ValueError as exc:
        raise StoreCryptoError(f"{source}: the store key must be hex") from exc
    if len(key) != KEY_BYTES:
        raise StoreCryptoError(f"{source}: the store key must be {KEY_BYTES} bytes (hex)")
    return key

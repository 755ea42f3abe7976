"""The backup key: one secret in a 0600 file, kept apart from the backups, from which every subkey is derived.

HKDF-SHA256 derives independent subkeys for chunk encryption, manifest encryption, keyed chunk ids
(so an object name never reveals a plaintext hash) and the Ed25519 key that signs manifests. The
key file holds 32 random bytes, base64, on one line; it is separate from the audit KEK.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import stat
from functools import cached_property
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32
_HEADER = "sentinel-backup-key-v1"


class KeyFileError(Exception):
    """The backup key file is missing, malformed or readable by others."""


def _derive(secret: bytes, purpose: str) -> bytes:
    return HKDF(algorithm=SHA256(), length=32, salt=None, info=f"sentinel-backup/v1 {purpose}".encode()).derive(secret)


class BackupKey:
    """The derived keys. Never logged: `repr` shows only the key id (a non-secret fingerprint)."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) != KEY_BYTES:
            raise KeyFileError(f"a backup key is {KEY_BYTES} bytes, got {len(secret)}")
        self._secret = secret

    def __repr__(self) -> str:
        return f"BackupKey(id={self.key_id})"

    @cached_property
    def key_id(self) -> str:
        """A public fingerprint: tells which key a repository was made with, reveals nothing of the key."""
        return _derive(self._secret, "key-id").hex()[:16]

    @cached_property
    def chunk_aead(self) -> AESGCM:
        return AESGCM(_derive(self._secret, "chunk-encryption"))

    @cached_property
    def manifest_aead(self) -> AESGCM:
        return AESGCM(_derive(self._secret, "manifest-encryption"))

    @cached_property
    def _id_key(self) -> bytes:
        return _derive(self._secret, "chunk-id")

    def chunk_id(self, data: bytes | memoryview) -> str:
        """HMAC-SHA256 of the plaintext: the chunk's name, stable for dedup, meaningless without the key."""
        return hmac.new(self._id_key, data, hashlib.sha256).hexdigest()

    @cached_property
    def signing_key(self) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(_derive(self._secret, "manifest-signing"))

    @cached_property
    def verify_key(self) -> Ed25519PublicKey:
        return self.signing_key.public_key()

    @classmethod
    def generate(cls) -> BackupKey:
        return cls(secrets.token_bytes(KEY_BYTES))

    def encoded(self) -> str:
        return f"{_HEADER} {base64.b64encode(self._secret).decode()}\n"

    @classmethod
    def decode(cls, text: str, source: str = "key") -> BackupKey:
        parts = text.split()
        if len(parts) != 2 or parts[0] != _HEADER:
            raise KeyFileError(f"{source} is not a Sentinel backup key (expected '{_HEADER} <base64>')")
        try:
            secret = base64.b64decode(parts[1], validate=True)
        except ValueError:
            raise KeyFileError(f"{source} is not valid base64") from None
        return cls(secret)


def create_key_file(path: Path) -> BackupKey:
    """Write a new random key to `path` with mode 0600 (its directory 0700); refuse to overwrite one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = BackupKey.generate()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path} already exists; a backup key is never overwritten (its backups need it)") from None
    with os.fdopen(fd, "w") as handle:
        handle.write(key.encoded())
        handle.flush()
        os.fsync(handle.fileno())
    return key


def load_key_file(path: Path) -> BackupKey:
    """Read the key, refusing a file that group or others can read (as ssh does with private keys)."""
    try:
        info = path.stat()
        text = path.read_text()
    except FileNotFoundError:
        raise KeyFileError(f"no backup key at {path}; create one with `sentinel backup init-key`") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read backup key {path}: {exc.strerror}") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        mode = stat.filemode(info.st_mode)
        raise KeyFileError(f"backup key {path} is accessible by other users (mode {mode}); chmod 600 it")
    return BackupKey.decode(text, str(path))

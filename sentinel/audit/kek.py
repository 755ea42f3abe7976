"""Key-encryption keys (KEKs): the root of the envelope. They never enter Elasticsearch or a backup.

`KeyEncryptionKey` is the KMS-shaped seam: `wrap`/`unwrap` data keys under a named key. The
shipped implementation keeps KEKs in a local file (`LocalKeyFile`, mode 0600); a Vault transit or
cloud KMS implementation only has to provide the same two calls.

The file holds every KEK still needed (the active one first-class), as JSON:

    {"version": 1, "active": "kek-20261128-3f9a", "keys": {"kek-20261128-3f9a": "<base64 32 bytes>"}}
"""

from __future__ import annotations

import base64
import os
import secrets
import stat
import time
from pathlib import Path
from typing import Protocol

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


class KeyUnavailable(Exception):
    """A key is missing or wrong. The message names the key id; it never contains key material."""


class KeyEncryptionKey(Protocol):
    """Wraps and unwraps data keys. `context` is bound as associated data (the data key's id)."""

    @property
    def key_id(self) -> str: ...

    def wrap(self, data_key: bytes, context: bytes) -> bytes: ...

    def unwrap(self, wrapped: bytes, context: bytes) -> bytes: ...


class _AesGcmKek:
    """AES-256-GCM key wrapping: nonce (12) || ciphertext+tag, the data key id as associated data."""

    def __init__(self, key_id: str, material: bytes) -> None:
        if len(material) != 32:
            raise KeyUnavailable(f"key-encryption key {key_id} is not 256 bits")
        self._id = key_id
        self._aead = AESGCM(material)

    @property
    def key_id(self) -> str:
        return self._id

    def wrap(self, data_key: bytes, context: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, data_key, context)

    def unwrap(self, wrapped: bytes, context: bytes) -> bytes:
        try:
            return self._aead.decrypt(wrapped[:12], wrapped[12:], context)
        except InvalidTag:
            raise KeyUnavailable(
                f"cannot unwrap data key {context.decode(errors='replace')} with key-encryption key {self._id}: "
                "wrong key or tampered key material"
            ) from None


def _stamp(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_mtime_ns, info.st_ino


def new_key_id(prefix: str) -> str:
    return f"{prefix}-{time.strftime('%Y%m%d', time.gmtime())}-{secrets.token_hex(3)}"


class LocalKeyFile:
    """KEKs kept in a local file with 0600 permissions (directory 0700)."""

    def __init__(self, path: Path, active: str, keys: dict[str, bytes], stamp: tuple[int, int] = (0, 0)) -> None:
        self.path = path
        self.active_id = active
        self._keys = keys
        self._stamp = stamp

    # -- lifecycle ---------------------------------------------------------------------------
    @classmethod
    def create(cls, path: Path) -> LocalKeyFile:
        """A new file with one fresh KEK. Refuses to overwrite an existing file."""
        if path.exists():
            raise KeyUnavailable(f"key file {path} already exists; refusing to overwrite it")
        key_id = new_key_id("kek")
        kf = cls(path, key_id, {key_id: AESGCM.generate_key(bit_length=256)})
        kf.save()
        return kf

    @classmethod
    def load(cls, path: Path) -> LocalKeyFile:
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            raise KeyUnavailable(f"key-encryption key file {path} does not exist (run `sentinel keys init`)") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyUnavailable(
                f"key file {path} is readable by group or others (mode {stat.S_IMODE(mode):o}); run chmod 600 {path}"
            )
        try:
            data = orjson.loads(path.read_bytes())
            keys = {kid: base64.b64decode(material) for kid, material in data["keys"].items()}
            active = data["active"]
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise KeyUnavailable(f"key file {path} is not a Sentinel key file: {type(exc).__name__}") from None
        if active not in keys:
            raise KeyUnavailable(f"key file {path} names active key {active} but does not contain it")
        return cls(path, active, keys, _stamp(path))

    def reloaded(self) -> LocalKeyFile:
        """This file as it is on disk now (a rewrap in another process adds keys); self if unchanged."""
        try:
            if _stamp(self.path) == self._stamp:
                return self
        except FileNotFoundError:
            return self
        return LocalKeyFile.load(self.path)

    def save(self) -> None:
        """Write atomically: a 0600 temp file in the same directory, fsync, rename."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path.parent, 0o700)
        body = orjson.dumps(
            {
                "version": 1,
                "active": self.active_id,
                "keys": {kid: base64.b64encode(material).decode() for kid, material in self._keys.items()},
            },
            option=orjson.OPT_INDENT_2,
        )
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        self._stamp = _stamp(self.path)

    def add_new(self) -> str:
        """Add a fresh KEK and make it active (the old ones stay until nothing needs them)."""
        key_id = new_key_id("kek")
        self._keys[key_id] = AESGCM.generate_key(bit_length=256)
        self.active_id = key_id
        self.save()
        return key_id

    def retire(self, key_id: str) -> None:
        if key_id == self.active_id:
            raise KeyUnavailable(f"{key_id} is the active key-encryption key and cannot be retired")
        self._keys.pop(key_id, None)
        self.save()

    # -- access ------------------------------------------------------------------------------
    @property
    def key_ids(self) -> list[str]:
        return list(self._keys)

    def active(self) -> KeyEncryptionKey:
        return _AesGcmKek(self.active_id, self._keys[self.active_id])

    def get(self, key_id: str) -> KeyEncryptionKey:
        material = self._keys.get(key_id)
        if material is None:
            raise KeyUnavailable(
                f"key-encryption key {key_id} is not in {self.path}; the data keys it wrapped cannot be opened"
            )
        return _AesGcmKek(key_id, material)

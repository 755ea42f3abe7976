"""`KeyRing`: the envelope's data keys, wrapped by the key-encryption key and kept beside the data.

Three kinds of keys, all random 256-bit, all stored only in wrapped form (`WrappedKey`) in the
spool and the store so that a backup or a restored store plus the KEK can open everything:

- data keys (`dk-YYYYMMDD-…`): encrypt content fields; a new one each UTC day, or on `rotate()`;
- the index key (`ix-…`): HMAC key for blind indexes; stable, so equal values stay searchable;
- the checkpoint signing key (`sk-…`): Ed25519; its public half is stored in clear.

Rotating the KEK (`rewrap`) re-wraps these keys and touches no record.
"""

from __future__ import annotations

import base64
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sentinel.audit.kek import KeyEncryptionKey, KeyUnavailable, LocalKeyFile

DATA, INDEX, SIGNING = "data", "index", "signing"


@dataclass(slots=True, frozen=True)
class WrappedKey:
    kid: str
    purpose: str
    kek_id: str
    wrapped: str
    """base64(nonce || AES-GCM(KEK, key, aad=kid))."""
    created: float
    public: str | None = None
    """For signing keys: the raw Ed25519 public key, base64."""

    def to_dict(self) -> dict[str, object]:
        return {
            "kid": self.kid,
            "purpose": self.purpose,
            "kek_id": self.kek_id,
            "wrapped": self.wrapped,
            "created": self.created,
            "public": self.public,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> WrappedKey:
        return cls(
            kid=str(data["kid"]),
            purpose=str(data["purpose"]),
            kek_id=str(data["kek_id"]),
            wrapped=str(data["wrapped"]),
            created=float(data["created"]),  # type: ignore[arg-type]
            public=str(data["public"]) if data.get("public") else None,
        )


class KeyTable(Protocol):
    """Where wrapped keys persist (the spool's `keys` table). `save` must be durable on return."""

    def load_keys(self) -> list[WrappedKey]: ...

    def save_keys(self, keys: Iterable[WrappedKey]) -> None: ...


def _day() -> str:
    return time.strftime("%Y%m%d", time.gmtime())


class KeyRing:
    def __init__(self, keks: LocalKeyFile, table: KeyTable | None = None, keys: Iterable[WrappedKey] = ()) -> None:
        self.keks = keks
        self._table = table
        self._wrapped: dict[str, WrappedKey] = {k.kid: k for k in keys}
        if table is not None:
            self._wrapped.update({k.kid: k for k in table.load_keys()})
        self._plain: dict[str, bytes] = {}
        self._aead: dict[str, AESGCM] = {}
        self._current: str | None = None
        self._lock = threading.Lock()
        self._check_keks()

    def _check_keks(self) -> None:
        """Fail at start, naming the key, if a stored key was wrapped by a KEK we do not have."""
        missing = {k.kek_id for k in self._wrapped.values()} - set(self.keks.key_ids)
        if missing:
            raise KeyUnavailable(
                f"stored data keys are wrapped by key-encryption key(s) {', '.join(sorted(missing))}, "
                f"which {self.keks.path} does not contain; wrong key file?"
            )

    # -- creating ------------------------------------------------------------------------------
    def _new(self, prefix: str, purpose: str, material: bytes, public: str | None = None) -> WrappedKey:
        kid = f"{prefix}-{_day()}-{secrets.token_hex(3)}"
        kek = self.keks.active()
        wrapped = WrappedKey(
            kid, purpose, kek.key_id, base64.b64encode(kek.wrap(material, kid.encode())).decode(), time.time(), public
        )
        if self._table is not None:
            self._table.save_keys([wrapped])
        self._wrapped[kid] = wrapped
        self._plain[kid] = material
        return wrapped

    def current_data_key(self) -> tuple[str, AESGCM]:
        """Today's data key, created (and made durable) on first use each UTC day."""
        kid = self._current
        if kid is None or not kid.startswith(f"dk-{_day()}-"):
            with self._lock:
                kid = self._current
                if kid is None or not kid.startswith(f"dk-{_day()}-"):
                    latest = self._latest(DATA)
                    if latest is not None and latest.kid.startswith(f"dk-{_day()}-"):
                        kid = latest.kid
                    else:
                        kid = self._new("dk", DATA, AESGCM.generate_key(bit_length=256)).kid
                    self._current = kid
        return kid, self.aead(kid)

    def rotate(self) -> str:
        """Start a new data key now; records already written keep theirs."""
        with self._lock:
            self._current = self._new("dk", DATA, AESGCM.generate_key(bit_length=256)).kid
            return self._current

    def index_key(self) -> bytes:
        latest = self._latest(INDEX)
        if latest is None:
            with self._lock:
                latest = self._latest(INDEX) or self._new("ix", INDEX, secrets.token_bytes(32))
        return self._unwrapped(latest.kid)

    def signing_key(self) -> tuple[str, Ed25519PrivateKey]:
        latest = self._latest(SIGNING)
        if latest is None:
            with self._lock:
                latest = self._latest(SIGNING)
                if latest is None:
                    private = Ed25519PrivateKey.generate()
                    raw = private.private_bytes(
                        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
                    )
                    public = private.public_key().public_bytes(
                        serialization.Encoding.Raw, serialization.PublicFormat.Raw
                    )
                    latest = self._new("sk", SIGNING, raw, base64.b64encode(public).decode())
        return latest.kid, Ed25519PrivateKey.from_private_bytes(self._unwrapped(latest.kid))

    # -- reading -------------------------------------------------------------------------------
    def _latest(self, purpose: str) -> WrappedKey | None:
        candidates = [k for k in self._wrapped.values() if k.purpose == purpose]
        return max(candidates, key=lambda k: (k.created, k.kid)) if candidates else None

    def wrapped(self, kid: str) -> WrappedKey:
        try:
            return self._wrapped[kid]
        except KeyError:
            raise KeyUnavailable(f"data key {kid} is not known to this key ring (not in the store?)") from None

    def _unwrapped(self, kid: str) -> bytes:
        plain = self._plain.get(kid)
        if plain is None:
            wrapped = self.wrapped(kid)
            kek: KeyEncryptionKey = self.keks.get(wrapped.kek_id)
            plain = kek.unwrap(base64.b64decode(wrapped.wrapped), kid.encode())
            self._plain[kid] = plain
        return plain

    def aead(self, kid: str) -> AESGCM:
        aead = self._aead.get(kid)
        if aead is None:
            aead = self._aead[kid] = AESGCM(self._unwrapped(kid))
        return aead

    def public_key(self, kid: str) -> Ed25519PublicKey:
        wrapped = self.wrapped(kid)
        if wrapped.public is None:
            raise KeyUnavailable(f"key {kid} is not a signing key")
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(wrapped.public))

    def all_keys(self) -> list[WrappedKey]:
        return sorted(self._wrapped.values(), key=lambda k: (k.created, k.kid))

    def learn(self, keys: Iterable[WrappedKey]) -> None:
        """Add keys read from a store (e.g. when opening a restored store)."""
        for key in keys:
            self._wrapped.setdefault(key.kid, key)

    # -- KEK rotation --------------------------------------------------------------------------
    def rewrap(self, new_kek: KeyEncryptionKey) -> list[WrappedKey]:
        """Re-wrap every key under `new_kek`; returns the new wrapped forms (records are untouched)."""
        rewrapped = []
        for key in self.all_keys():
            plain = self._unwrapped(key.kid)
            rewrapped.append(
                WrappedKey(
                    key.kid,
                    key.purpose,
                    new_kek.key_id,
                    base64.b64encode(new_kek.wrap(plain, key.kid.encode())).decode(),
                    key.created,
                    key.public,
                )
            )
        if self._table is not None:
            self._table.save_keys(rewrapped)
        self._wrapped.update({k.kid: k for k in rewrapped})
        return rewrapped

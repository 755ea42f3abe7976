"""`KeyRing`: the envelope's data keys, wrapped by the key-encryption key and kept beside the data.

Three kinds of keys, all random, all stored only in wrapped form (`WrappedKey`) in the spool and
the store so that a backup or a restored store plus the KEK can open everything:

- data keys (`dk-YYYYMMDD-…`): encrypt content fields; a new one each UTC day, or on `rotate()`;
- the index key (`ix-…`): HMAC key for blind indexes; stable, so equal values stay searchable;
- the checkpoint signing key (`sk-…`): Ed25519; its public half is stored in clear. With `audit.signer`
  it is held in a PKCS#11 token instead (`sk-hsm-…`, sentinel/audit/signer.py): the ring stores only its
  public half, as a key wrapped by no KEK (`kek_id` "external").

A key may be stored wrapped under several KEKs: `rewrap` adds a wrapping under a new KEK (the
store is append-only) and touches no record; a key opens if any of its wrappings' KEKs is at hand.
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
from sentinel.audit.signer import Signer, external_kid

DATA, INDEX, SIGNING = "data", "index", "signing"
EXTERNAL = "external"
"""The `kek_id` of a key held outside the ring (a PKCS#11 token): no wrapping, only its public half."""


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
        self._wrappings: dict[str, dict[str, WrappedKey]] = {}
        self._ends: dict[tuple[str, bool], WrappedKey | None] = {}
        """(purpose, latest?) -> the oldest or newest key of that purpose; cleared when keys are learnt
        (sealing asks for them on every record, and a year of daily data keys is a long list)."""
        self.learn(keys)
        if table is not None:
            self.learn(table.load_keys())
        self._plain: dict[str, bytes] = {}
        self._aead: dict[str, AESGCM] = {}
        self._current: str | None = None
        self._external: tuple[str, Signer] | None = None
        self._lock = threading.Lock()
        self._check_keks()

    def _check_keks(self) -> None:
        """Fail at start, naming the keys, if some stored key has no wrapping under a KEK we hold."""
        held = set(self.keks.key_ids) | {EXTERNAL}
        orphans = {kid: sorted(wrappings) for kid, wrappings in self._wrappings.items() if not (set(wrappings) & held)}
        if orphans:
            needed = sorted({kek for keks in orphans.values() for kek in keks})
            raise KeyUnavailable(
                f"{len(orphans)} stored key(s) (e.g. {next(iter(orphans))}) are wrapped only by key-encryption "
                f"key(s) {', '.join(needed)}, which {self.keks.path} does not contain; wrong key file?"
            )

    # -- learning keys -------------------------------------------------------------------------
    def learn(self, keys: Iterable[WrappedKey]) -> int:
        """Add wrappings (from the spool, a store, a restored backup); returns how many were new."""
        new = 0
        for key in keys:
            if key.kek_id == EXTERNAL and not self._external_ok(key):
                continue
            wrappings = self._wrappings.setdefault(key.kid, {})
            if key.kek_id not in wrappings:
                wrappings[key.kek_id] = key
                new += 1
        if new:
            self._ends.clear()
        return new

    def _external_ok(self, key: WrappedKey) -> bool:
        """An `external` entry is only ever the public half of a token's signing key, under the id its
        public key gives, for a key no KEK wraps: anything else (say, written into a keys table to make a
        data key look held in a token) is ignored."""
        if key.purpose != SIGNING or key.wrapped or not key.public:
            return False
        try:
            public = Ed25519PublicKey.from_public_bytes(base64.b64decode(key.public))
        except ValueError:
            return False
        return key.kid == external_kid(public) and not (set(self._wrappings.get(key.kid, {})) - {EXTERNAL})

    def refresh(self) -> None:
        """Pick up keys another process added (`sentinel keys rotate` / `rewrap`) and a changed KEK file."""
        self.keks = self.keks.reloaded()
        if self._table is not None and self.learn(self._table.load_keys()):
            latest = self._latest(DATA)
            if latest is not None and self._current is not None and latest.kid != self._current:
                current = self._any(self._current)
                if latest.created > current.created:
                    self._current = latest.kid

    # -- creating ------------------------------------------------------------------------------
    def _new(self, prefix: str, purpose: str, material: bytes, public: str | None = None) -> WrappedKey:
        kid = f"{prefix}-{_day()}-{secrets.token_hex(3)}"
        kek = self.keks.active()
        wrapped = WrappedKey(
            kid, purpose, kek.key_id, base64.b64encode(kek.wrap(material, kid.encode())).decode(), time.time(), public
        )
        if self._table is not None:
            self._table.save_keys([wrapped])
        self.learn([wrapped])
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
        """The blind-index key: the oldest one known, so every process that knows the same keys agrees."""
        first = self._first(INDEX)
        if first is None:
            with self._lock:
                first = self._first(INDEX) or self._new("ix", INDEX, secrets.token_bytes(32))
        return self._unwrapped(first.kid)

    def use_signer(self, signer: Signer) -> str:
        """Sign with `signer` (a key in a PKCS#11 token) from now on; its public half is stored (and made
        durable) under `external_kid` the first time. Returns the key id."""
        kid = external_kid(signer.public_key())
        if kid not in self._wrappings:
            public = signer.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            key = WrappedKey(kid, SIGNING, EXTERNAL, "", time.time(), base64.b64encode(public).decode())
            if self._table is not None:
                self._table.save_keys([key])
            self.learn([key])
        self._external = (kid, signer)
        return kid

    def signing_key(self) -> tuple[str, Signer]:
        """The key checkpoints and reports are signed with: the token's (`use_signer`), else the newest
        software key, made on first use."""
        if self._external is not None:
            return self._external
        tokens = sorted(kid for kid, w in self._wrappings.items() if EXTERNAL in w)
        if tokens:
            # Falling back to a key the KEK unwraps would hand the operator the signing key again.
            raise KeyUnavailable(
                f"this audit trail signs with {tokens[-1]}, a key held in a PKCS#11 token: configure audit.signer "
                "(a software signing key is never made once a token has signed)"
            )
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
    def _any(self, kid: str) -> WrappedKey:
        try:
            return next(iter(self._wrappings[kid].values()))
        except KeyError:
            raise KeyUnavailable(f"data key {kid} is not known to this key ring (not in the store?)") from None

    def _first(self, purpose: str) -> WrappedKey | None:
        return self._end(purpose, latest=False)

    def _latest(self, purpose: str) -> WrappedKey | None:
        return self._end(purpose, latest=True)

    def _end(self, purpose: str, *, latest: bool) -> WrappedKey | None:
        try:
            return self._ends[(purpose, latest)]
        except KeyError:
            pass
        # A key held in a token is never the software key: `signing_key` answers it from `_external`.
        candidates = [
            self._any(kid)
            for kid, w in self._wrappings.items()
            if next(iter(w.values())).purpose == purpose and EXTERNAL not in w
        ]
        pick = max if latest else min
        end = pick(candidates, key=lambda k: (k.created, k.kid)) if candidates else None
        self._ends[(purpose, latest)] = end
        return end

    def _unwrapped(self, kid: str) -> bytes:
        plain = self._plain.get(kid)
        if plain is None:
            wrappings = self._wrappings.get(kid)
            if not wrappings:
                raise KeyUnavailable(f"data key {kid} is not known to this key ring (not in the store?)")
            held = [w for kek_id, w in wrappings.items() if kek_id in self.keks.key_ids]
            if not held and EXTERNAL in wrappings:
                raise KeyUnavailable(f"key {kid} is held in a PKCS#11 token (audit.signer): it never leaves it")
            if not held:
                raise KeyUnavailable(
                    f"data key {kid} is wrapped only by key-encryption key(s) {', '.join(sorted(wrappings))}, "
                    f"which {self.keks.path} does not contain"
                )
            # Prefer the active KEK's wrapping; every wrapping holds the same key.
            held.sort(key=lambda w: w.kek_id != self.keks.active_id)
            kek: KeyEncryptionKey = self.keks.get(held[0].kek_id)
            plain = kek.unwrap(base64.b64decode(held[0].wrapped), kid.encode())
            self._plain[kid] = plain
        return plain

    def aead(self, kid: str) -> AESGCM:
        aead = self._aead.get(kid)
        if aead is None:
            aead = self._aead[kid] = AESGCM(self._unwrapped(kid))
        return aead

    def public_key(self, kid: str) -> Ed25519PublicKey:
        wrapped = self._any(kid)
        if wrapped.public is None:
            raise KeyUnavailable(f"key {kid} is not a signing key")
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(wrapped.public))

    def all_keys(self) -> list[WrappedKey]:
        """One entry per key (its first wrapping), oldest first."""
        return sorted((self._any(kid) for kid in self._wrappings), key=lambda k: (k.created, k.kid))

    def wrappings(self, kid: str) -> list[WrappedKey]:
        return list(self._wrappings.get(kid, {}).values())

    # -- KEK rotation --------------------------------------------------------------------------
    def rewrap(self, new_kek: KeyEncryptionKey) -> list[WrappedKey]:
        """Wrap every key under `new_kek` too; returns the new wrappings (records are untouched). Keys held
        in a token have nothing to wrap."""
        rewrapped = []
        for key in self.all_keys():
            if key.kek_id == EXTERNAL:
                continue
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
        self.learn(rewrapped)
        return rewrapped

    def unwrappable_without(self, kek_id: str) -> list[str]:
        """Keys that would become unreadable if `kek_id` were removed from the key file."""
        held = set(self.keks.key_ids) - {kek_id} | {EXTERNAL}
        return [kid for kid, wrappings in self._wrappings.items() if not (set(wrappings) & held)]

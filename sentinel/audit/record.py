"""Audit documents: how an `Interaction` (or an audit `Event`) becomes an encrypted, chained record.

A document keeps metadata in clear (searchable: time, model, operation, status, latencies, tokens,
sizes, ids, caller identity) and every content field encrypted:

    {"doc_id": "<instance>:<seq>", "instance": ..., "seq": 42, "prev_hash": "<hex>",
     "kind": "interaction" | "interaction_started" | "event", "schema_version": 1,
     "@timestamp": "...", "recorded_at": 1795891064.57,
     "interaction": {...metadata...} | "event": {...},
     "encrypted": {"<field>": {"kid": "dk-…", "nonce": "<b64>", "ct": "<b64>"}, ...},
     "hash": "<hex sha256 of the canonical document without `hash`>"}

Each ciphertext is AES-256-GCM under the day's data key with a fresh 96-bit nonce; its associated
data is `sentinel-audit/v<schema>|<doc_id>|<field>`, so a ciphertext moved to another record or
field fails to decrypt. The Dify end-user id is also given an HMAC blind index
(`interaction.caller.user_index`) so auditors can filter by user without decrypting.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag

from sentinel.audit.kek import KeyUnavailable
from sentinel.audit.keyring import KeyRing
from sentinel.interaction import Caller, Interaction, Usage

SCHEMA_VERSION = 1
GENESIS = "0" * 64

INTERACTION = "interaction"
INTERACTION_STARTED = "interaction_started"
EVENT = "event"

ENCRYPTED_FIELDS = (
    "request_messages",
    "response_text",
    "reasoning_text",
    "tool_calls",
    "extra_choices",
    "error_message",
    "caller_user",
)
"""Interaction fields stored only as ciphertext (the `Interaction.CONTENT_FIELDS` plus upstream
error messages, which can echo parts of a prompt)."""


@dataclass(slots=True)
class Event:
    """Something that happened to the audit trail or around it: content decrypted or exported,
    a policy changed, a key rotated, a report issued, an admin login failed."""

    type: str
    actor: str
    details: dict[str, Any] = field(default_factory=dict)
    """Plaintext, searchable: what happened, to what."""
    reason: str | None = None
    """Why (stated by the actor), stored encrypted."""
    private: dict[str, Any] = field(default_factory=dict)
    """Other details stored encrypted (e.g. a policy diff, which may quote sensitive keywords)."""
    time: float = field(default_factory=time.time)


class RecordCorrupt(Exception):
    """A ciphertext did not authenticate: wrong key, tampered bytes, or moved to another record or field."""


def _plain(value: Any) -> Any:
    # orjson writes a dataclass's fields in definition order even with OPT_SORT_KEYS; as a dict
    # (what `dataclasses.asdict` made of the whole interaction before) its keys are sorted.
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


_CANONICAL = orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATACLASS


def canonical(doc: dict[str, Any]) -> bytes:
    """The bytes a record's hash covers: sorted-key compact JSON of the document minus `hash`."""
    body: bytes = orjson.dumps({k: v for k, v in doc.items() if k != "hash"}, default=_plain, option=_CANONICAL)
    return body


def digest(doc: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(doc)).hexdigest()


_HASH_TAIL = len(b',"hash":"') + 64 + len(b'"}')


def encode(doc: dict[str, Any]) -> bytes:
    """Stored form: the canonical bytes with `"hash"` appended last, so verifying a stored record
    is one SHA-256 over a byte slice (see `stored_hashes`) instead of a parse and re-encode."""
    body = canonical(doc)
    return body[:-1] + b',"hash":"' + str(doc["hash"]).encode() + b'"}'


def stored_hashes(body: bytes) -> tuple[str, str]:
    """(hash the record claims, hash of its content) for a stored record."""
    tail = body[-_HASH_TAIL:]
    if tail.startswith(b',"hash":"') and tail.endswith(b'"}'):
        claimed = tail[9:73].decode()
        content = hashlib.sha256(memoryview(body)[:-_HASH_TAIL])  # no copy of the body
        content.update(b"}")
        return claimed, content.hexdigest()
    doc = orjson.loads(body)  # not in stored form (re-serialised by some tool): canonicalise
    return str(doc.get("hash")), digest(doc)


def blind_index(index_key: bytes, value: str) -> str:
    """Truncated HMAC-SHA256 (128 bits): equal inputs match, the value itself is not revealed."""
    return hmac.new(index_key, value.encode(), hashlib.sha256).hexdigest()[:32]


def _aad(doc_id: str, name: str) -> bytes:
    return f"sentinel-audit/v{SCHEMA_VERSION}|{doc_id}|{name}".encode()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_INTERACTION_FIELDS = tuple(f.name for f in dataclasses.fields(Interaction))
_CALLER_FIELDS = tuple(f.name for f in dataclasses.fields(Caller))
_USAGE_FIELDS = tuple(f.name for f in dataclasses.fields(Usage))


def _metadata(interaction: Interaction, index_key: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split an interaction into clear metadata and the content values to encrypt.

    Built field by field: `dataclasses.asdict` deep-copies every value and was half the cost of
    sealing. Nothing here or downstream mutates the values, and `canonical` writes any dataclass
    nested in them as `asdict` would, so the stored bytes are the same.
    """
    data = {name: getattr(interaction, name) for name in _INTERACTION_FIELDS}
    content = {name: data.pop(name) for name in ENCRYPTED_FIELDS if name in data}
    caller = {name: getattr(interaction.caller, name) for name in _CALLER_FIELDS}
    user = caller.pop("user")
    content["caller_user"] = user
    caller["user_index"] = blind_index(index_key, user) if user else None
    data["caller"] = caller
    data["usage"] = {name: getattr(interaction.usage, name) for name in _USAGE_FIELDS}
    return data, content


def seal(
    keyring: KeyRing,
    *,
    instance: str,
    seq: int,
    prev_hash: str,
    kind: str,
    interaction: Interaction | None = None,
    event: Event | None = None,
) -> dict[str, Any]:
    """Build the document for one chain position: encrypt content, link to `prev_hash`, hash."""
    return seal_encoded(
        keyring, instance=instance, seq=seq, prev_hash=prev_hash, kind=kind, interaction=interaction, event=event
    )[0]


def seal_encoded(
    keyring: KeyRing,
    *,
    instance: str,
    seq: int,
    prev_hash: str,
    kind: str,
    interaction: Interaction | None = None,
    event: Event | None = None,
) -> tuple[dict[str, Any], bytes]:
    """`seal`, plus the document's stored form (`encode`), from one serialisation instead of two."""
    doc_id = f"{instance}:{seq:012d}"
    now = time.time()
    doc: dict[str, Any] = {
        "doc_id": doc_id,
        "instance": instance,
        "seq": seq,
        "prev_hash": prev_hash,
        "kind": kind,
        "schema_version": SCHEMA_VERSION,
        "recorded_at": now,
    }
    content: dict[str, Any] = {}
    if interaction is not None:
        metadata, content = _metadata(interaction, keyring.index_key())
        doc["@timestamp"] = _iso(interaction.started_at)
        doc["interaction"] = metadata
    elif event is not None:
        doc["@timestamp"] = _iso(event.time)
        doc["event"] = {"type": event.type, "actor": event.actor, "details": event.details, "time": event.time}
        if event.reason is not None:
            content["reason"] = event.reason
        for name, value in event.private.items():
            content[f"private_{name}"] = value
    kid, aead = keyring.current_data_key()
    encrypted = {}
    present = [(name, value) for name, value in content.items() if value is not None]
    nonces = os.urandom(12 * len(present))  # one system call for the record's fresh 96-bit nonces
    for position, (name, value) in enumerate(present):
        nonce = nonces[12 * position : 12 * position + 12]
        ciphertext = aead.encrypt(nonce, orjson.dumps(value), _aad(doc_id, name))
        encrypted[name] = {
            "kid": kid,
            "nonce": base64.b64encode(nonce).decode(),
            "ct": base64.b64encode(ciphertext).decode(),
        }
    doc["encrypted"] = encrypted
    body = canonical(doc)
    doc["hash"] = hashlib.sha256(body).hexdigest()
    return doc, body[:-1] + b',"hash":"' + doc["hash"].encode() + b'"}'


def decrypt(keyring: KeyRing, doc: dict[str, Any]) -> dict[str, Any]:
    """Every encrypted field of a document, in clear. Raises `RecordCorrupt` or `KeyUnavailable`."""
    doc_id = doc["doc_id"]
    out: dict[str, Any] = {}
    for name, blob in (doc.get("encrypted") or {}).items():
        try:
            aead = keyring.aead(blob["kid"])
            plain = aead.decrypt(base64.b64decode(blob["nonce"]), base64.b64decode(blob["ct"]), _aad(doc_id, name))
        except InvalidTag:
            raise RecordCorrupt(
                f"field {name} of record {doc_id} does not decrypt under key {blob['kid']}: "
                "tampered, moved from another record or field, or wrong key"
            ) from None
        except KeyUnavailable:
            raise
        out[name] = orjson.loads(plain)
    return out

"""Chain heads and signed checkpoints (the CloudTrail digest pattern).

Every record carries its instance's contiguous sequence number and the hash of the record before
it. Every N records or M minutes the instance signs a `Checkpoint` — its head sequence and hash —
with its Ed25519 key; each checkpoint also carries the hash of the previous one, so deleting a
checkpoint shows too. A verifier that trusts the public key can then detect a rewritten chain,
a truncated tail, and forged or missing checkpoints.
"""

from __future__ import annotations

import base64
import hashlib
import time
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sentinel.audit.record import GENESIS
from sentinel.audit.signer import Signer


@dataclass(slots=True)
class ChainHead:
    seq: int = 0
    hash: str = GENESIS
    recorded_at: float = 0.0


def _signed_bytes(checkpoint: dict[str, Any]) -> bytes:
    return orjson.dumps({k: v for k, v in checkpoint.items() if k != "signature"}, option=orjson.OPT_SORT_KEYS)


def checkpoint_digest(checkpoint: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(checkpoint, option=orjson.OPT_SORT_KEYS)).hexdigest()


def make_checkpoint(
    instance: str,
    head: ChainHead,
    previous: dict[str, Any] | None,
    kid: str,
    key: Signer,
    note: str | None = None,
) -> dict[str, Any]:
    """The signed checkpoint of `head`; `note`, the C2SP signed checkpoint of the chain's Merkle tree
    at the same size (sentinel/audit/note.py), rides along under the same signature."""
    checkpoint: dict[str, Any] = {
        "doc_id": f"{instance}:{head.seq:012d}",
        "instance": instance,
        "seq": head.seq,
        "hash": head.hash,
        "time": time.time(),
        "prev_checkpoint": checkpoint_digest(previous) if previous is not None else None,
        "kid": kid,
    }
    if note is not None:
        checkpoint["note"] = note
    checkpoint["signature"] = base64.b64encode(key.sign(_signed_bytes(checkpoint))).decode()
    return checkpoint


def signature_valid(checkpoint: dict[str, Any], public_key: Ed25519PublicKey) -> bool:
    try:
        public_key.verify(base64.b64decode(checkpoint["signature"]), _signed_bytes(checkpoint))
    except (InvalidSignature, KeyError, ValueError):
        return False
    return True

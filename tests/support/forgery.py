"""A forgery of the embedded store that its own keys cannot catch: what an operator who holds the
key-encryption key can do behind Sentinel's back with plain SQL to vouch for a rewritten trail. Only
pinned keys show it."""

from __future__ import annotations

import base64
import contextlib
import sqlite3
from pathlib import Path

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sentinel.audit.chain import checkpoint_digest
from sentinel.audit.kek import LocalKeyFile
from sentinel.audit.keyring import SIGNING, WrappedKey

FORGED_KID = "sk-20991231-f0f0f0"


def forge(store: Path, key_file: Path) -> str:
    """Add a signing key of the forger's own to the store (wrapped under the real KEK, so everything
    still opens) and re-sign every checkpoint of every chain with it, each naming the records' hashes
    as stored: any rewrite re-hashed before this passes a check against the keys stored beside the
    records. Returns the new key's id."""
    private = Ed25519PrivateKey.generate()
    raw = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    kek = LocalKeyFile.load(key_file).active()
    with contextlib.closing(sqlite3.connect(store)) as db:
        newest = max(orjson.loads(body)["created"] for (body,) in db.execute("SELECT body FROM keys"))
        key = WrappedKey(
            FORGED_KID,
            SIGNING,
            kek.key_id,
            base64.b64encode(kek.wrap(raw, FORGED_KID.encode())).decode(),
            newest + 1,
            base64.b64encode(public).decode(),
        )
        db.execute(
            "INSERT INTO keys (kid, kek_id, body) VALUES (?, ?, ?)",
            (key.kid, key.kek_id, orjson.dumps(key.to_dict()).decode()),
        )
        hashes = {
            (chain, seq): hash_
            for chain, seq, hash_ in db.execute("SELECT instance, seq, hash FROM records ORDER BY instance, seq")
        }
        before: dict[str, dict[str, object]] = {}
        for doc_id, body in db.execute("SELECT doc_id, body FROM checkpoints ORDER BY instance, seq").fetchall():
            checkpoint = orjson.loads(body)
            chain = checkpoint["instance"]
            checkpoint["hash"] = hashes.get((chain, checkpoint["seq"]), checkpoint["hash"])
            checkpoint["prev_checkpoint"] = checkpoint_digest(before[chain]) if chain in before else None
            checkpoint["kid"] = FORGED_KID
            checkpoint.pop("signature", None)
            signed = orjson.dumps(checkpoint, option=orjson.OPT_SORT_KEYS)
            checkpoint["signature"] = base64.b64encode(private.sign(signed)).decode()
            db.execute("UPDATE checkpoints SET body = ? WHERE doc_id = ?", (orjson.dumps(checkpoint).decode(), doc_id))
            before[chain] = checkpoint
        db.commit()
    return FORGED_KID

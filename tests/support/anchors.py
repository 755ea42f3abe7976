"""Anchoring a test trail's checkpoints in a real Object Lock bucket, and rewriting that trail as the
operator could: with the real signing key, so that everything local verifies (issue #14)."""

from __future__ import annotations

import base64
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sentinel.audit.anchor.check import AnchorReading, read_anchors
from sentinel.audit.anchor.s3 import ObjectLockAnchor, ObjectLockAnchorSettings
from sentinel.audit.anchor.tsa import TimestampAuthority, TimestampTrust
from sentinel.audit.chain import checkpoint_digest
from sentinel.audit.note import Checkpoint, sign_checkpoint
from sentinel.audit.record import digest, encode
from sentinel.audit.store.embedded import COLUMN_NAMES, record_columns
from sentinel.audit.tlog import CompactRange, leaf_hash
from tests.audit.support import Trail, running_trail
from tests.support.seaweed import ACCESS_KEY, SECRET_KEY, Seaweed
from tests.support.tsa import Tsa

PREFIX = "sentinel/audit"
ORIGIN = f"{PREFIX}/node-a"
Found = list[tuple[str, int | None, int | None]]
"""The trail's origin prefix (`audit.log_origin`'s default): checkpoints name `sentinel/audit/<instance>`."""
NOW = datetime(2099, 1, 1, tzinfo=UTC)
"""The anchor's clock: retention must end in the server's future, whatever the machine's date."""


def anchor_settings(seaweed: Seaweed, bucket: str, **extra: Any) -> dict[str, Any]:
    return {
        "endpoint_url": seaweed.endpoint,
        "bucket": bucket,
        "prefix": "anchors",
        "access_key_id": ACCESS_KEY,
        "secret_access_key": SECRET_KEY,
        "retention_days": 1,
        "max_attempts": 1,
        **extra,
    }


@contextmanager
def object_lock_anchor(seaweed: Seaweed, bucket: str) -> Iterator[ObjectLockAnchor]:
    settings = ObjectLockAnchorSettings(**anchor_settings(seaweed, bucket))
    anchor = ObjectLockAnchor.from_settings(settings, clock=NOW.timestamp)
    try:
        yield anchor
    finally:
        anchor.close()


def checkpoints(db_path: Path, instance: str | None = None) -> list[dict[str, Any]]:
    """The checkpoints a spool (or store) holds, oldest first."""
    with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as db:
        rows = db.execute("SELECT body FROM checkpoints ORDER BY seq").fetchall()
    found = [orjson.loads(body) for (body,) in rows]
    return [c for c in found if instance is None or c["instance"] == instance]


def origin(checkpoint: dict[str, Any]) -> str:
    return str(checkpoint["note"]).split("\n", 1)[0]


async def publish(
    anchor: ObjectLockAnchor, anchored: list[dict[str, Any]], stamps: TimestampAuthority | None = None
) -> dict[int, bytes]:
    """Publish each checkpoint's note (with a token from `stamps`) as the publisher does; the tokens by size."""
    tokens = {}
    for checkpoint in anchored:
        note = str(checkpoint["note"]).encode()
        token = await stamps.stamp(note) if stamps is not None else None
        await anchor.publish(origin(checkpoint), int(checkpoint["seq"]), note, token)
        if token is not None:
            tokens[int(checkpoint["seq"])] = token
    return tokens


def rewrite(store: Path, instance: str, seq: int, signer: tuple[str, Ed25519PrivateKey], prefix: str = PREFIX) -> None:
    """Change record `seq`, re-hash and relink every later record, and re-sign every checkpoint of the
    chain with `signer` (the real key: the operator holds the KEK that unwraps it): each checkpoint's
    hash, its link to the one before and its Merkle note, recomputed over the rewritten records. The
    store is then consistent in itself and under the real key; only the anchors remember otherwise."""
    kid, key = signer
    tree, roots, hashes = CompactRange(), {}, {}
    assignments = ", ".join(f"{name} = ?" for name in (*COLUMN_NAMES, "body"))
    with contextlib.closing(sqlite3.connect(store)) as db:
        rows = db.execute(
            "SELECT seq, CAST(body AS BLOB) FROM records WHERE instance = ? ORDER BY seq", (instance,)
        ).fetchall()
        previous = None
        for at, body in rows:
            stored = bytes(body)
            if at >= seq:
                doc = orjson.loads(stored)
                if at == seq:
                    doc["interaction"]["model_requested"] = "rewritten"
                else:
                    doc["prev_hash"] = previous
                doc["hash"] = digest(doc)
                stored = encode(doc)
                db.execute(
                    f"UPDATE records SET {assignments} WHERE instance = ? AND seq = ?",
                    (*record_columns(doc), stored.decode(), instance, at),
                )
            previous = orjson.loads(stored)["hash"]
            tree.append(leaf_hash(stored))
            roots[at], hashes[at] = tree.root(), previous
        before = None
        for doc_id, body in db.execute(
            "SELECT doc_id, body FROM checkpoints WHERE instance = ? ORDER BY seq", (instance,)
        ).fetchall():
            checkpoint = orjson.loads(body)
            at = checkpoint["seq"]
            checkpoint["hash"] = hashes[at]
            checkpoint["prev_checkpoint"] = checkpoint_digest(before) if before is not None else None
            checkpoint["kid"] = kid
            checkpoint["note"] = sign_checkpoint(Checkpoint(f"{prefix}/{instance}", at, roots[at]), key)
            checkpoint.pop("signature")
            signed = orjson.dumps(checkpoint, option=orjson.OPT_SORT_KEYS)
            checkpoint["signature"] = base64.b64encode(key.sign(signed)).decode()
            db.execute("UPDATE checkpoints SET body = ? WHERE doc_id = ?", (orjson.dumps(checkpoint).decode(), doc_id))
            before = checkpoint
        db.commit()


@dataclass
class Anchored:
    """A trail of 30 records (checkpoints at 1, 8, 15, 22 and 29), shipped to its store, every checkpoint
    anchored with a token; `owner` is a plain S3 client with the anchor's own credentials."""

    trail: Trail
    anchor: ObjectLockAnchor
    trust: TimestampTrust
    bucket: str
    owner: Any
    tokens: dict[int, bytes]

    def keys(self) -> dict[str, Ed25519PublicKey]:
        ring = self.trail.keyring
        return {k.kid: ring.public_key(k.kid) for k in ring.all_keys() if k.purpose == "signing"}

    def signer(self) -> tuple[str, Ed25519PrivateKey]:
        return self.trail.keyring.signing_key()

    def checkpoints(self) -> list[dict[str, Any]]:
        return checkpoints(self.trail.spool.path)

    async def read(self, *, every: bool = False) -> AnchorReading:
        return await read_anchors(self.anchor, self.keys(), PREFIX, self.trust, every=every)

    async def local(self) -> Found:
        return sorted((f.kind, f.seq, f.seq_to) for f in (await self.trail.verify()).findings)

    async def against_anchors(self, *, every: bool = False) -> Found:
        """Every finding of the verifier given the anchored roots, and of the anchors themselves."""
        reading = await self.read(every=every)
        report = await self.trail.verify(anchored=reading.roots)
        return sorted((f.kind, f.seq, f.seq_to) for f in [*report.findings, *reading.findings])

    def key(self, size: int, root: bytes) -> str:
        """The object key of the checkpoint anchored at `size` with `root`."""
        return self.anchor.key(ORIGIN, size, root)

    def note(self, size: int, root: bytes, key: Ed25519PrivateKey | None = None) -> bytes:
        return sign_checkpoint(Checkpoint(ORIGIN, size, root), key or self.signer()[1]).encode()


@asynccontextmanager
async def anchored_trail(
    directory: Path, seaweed: Seaweed, tsa: Tsa, *, instance: str = "node-a"
) -> AsyncIterator[Anchored]:
    """`Anchored` in `directory` (spool.db, store.db, keys/kek.key), in a new Object Lock bucket."""
    bucket = seaweed.bucket(lock=True)
    owner = seaweed.client()
    stamps = TimestampAuthority(tsa.url, tsa.ca_path)
    try:
        with object_lock_anchor(seaweed, bucket) as anchor:
            async with running_trail(directory, checkpoint_every=7, instance=instance) as trail:
                await trail.write(30)
                await trail.ship()
                tokens = await publish(anchor, checkpoints(trail.spool.path), stamps)
                assert sorted(tokens) == [1, 8, 15, 22, 29]
                yield Anchored(trail, anchor, stamps.trust, bucket, owner, tokens)
    finally:
        owner.close()

"""Building real audit trails for tests: the real spool, trail, shipper and embedded store."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from sentinel.audit.kek import LocalKeyFile
from sentinel.audit.keyring import KeyRing
from sentinel.audit.record import INTERACTION, encode
from sentinel.audit.shipper import Shipper
from sentinel.audit.spool import Spool
from sentinel.audit.store.embedded import EmbeddedStore
from sentinel.audit.trail import AuditMetrics, AuditTrail, Entry
from sentinel.audit.verify import VerifyReport, verify
from sentinel.interaction import Caller, Interaction


def make_interaction(n: int, **fields: Any) -> Interaction:
    base: dict[str, Any] = {
        "id": f"interaction-{n}",
        "started_at": 1_795_000_000.0 + n,
        "method": "POST",
        "path": "/v1/chat/completions",
        "model_requested": "deepseek-r1",
        "status_code": 200,
        "request_messages": [{"role": "user", "content": f"prompt {n}"}],
        "response_text": f"answer {n}",
        "caller": Caller(user=f"user-{n % 3}", api_key_id="key-1"),
        "duration_s": 0.5,
    }
    base.update(fields)
    return Interaction(**base)


@dataclass
class Trail:
    spool: Spool
    trail: AuditTrail
    keyring: KeyRing
    store: EmbeddedStore
    shipper: Shipper
    metrics: AuditMetrics

    async def write(self, count: int, start: int = 1) -> None:
        for n in range(start, start + count):
            await self.trail.append([Entry(INTERACTION, interaction=make_interaction(n))])

    async def ship(self) -> None:
        while await self.shipper.ship_once():
            pass

    async def verify(self, **kwargs: Any) -> VerifyReport:
        keys = {k.kid: self.keyring.public_key(k.kid) for k in self.keyring.all_keys() if k.purpose == "signing"}
        return await verify(self.store, keys.get, **kwargs)

    def sql(self, statement: str, params: tuple[Any, ...] = ()) -> None:
        """Tamper with the store behind Sentinel's back, as an attacker with database access would."""
        db = sqlite3.connect(self.store.path)
        db.execute(statement, params)
        db.commit()
        db.close()

    def body(self, seq: int) -> dict[str, Any]:
        db = sqlite3.connect(self.store.path)
        (body,) = db.execute("SELECT body FROM records WHERE seq = ?", (seq,)).fetchone()
        db.close()
        doc: dict[str, Any] = orjson.loads(body)
        return doc

    def replace(self, seq: int, doc: dict[str, Any], *, rehash: bool = False) -> None:
        """Rewrite the record at `seq` as `doc`, its columns too (a thorough attacker)."""
        from sentinel.audit.record import digest
        from sentinel.audit.store.embedded import COLUMN_NAMES, record_columns

        if rehash:
            doc["hash"] = digest(doc)
        assignments = ", ".join(f"{name} = ?" for name in (*COLUMN_NAMES, "body"))
        self.sql(
            f"UPDATE records SET {assignments} WHERE seq = ?",
            (*record_columns(doc), encode(doc).decode(), seq),
        )


@asynccontextmanager
async def running_trail(
    tmp_path: Path, *, checkpoint_every: int = 1000, instance: str = "node-a"
) -> AsyncIterator[Trail]:
    spool = Spool(tmp_path / "spool.db")
    await spool.run(spool.open)
    keks = LocalKeyFile.create(tmp_path / "keys" / "kek.key")
    keyring = KeyRing(keks, spool)
    metrics = AuditMetrics(CollectorRegistry())
    trail = AuditTrail(spool, instance, metrics, checkpoint_every=checkpoint_every, checkpoint_interval=3600)
    await trail.start(keyring)
    store = EmbeddedStore(tmp_path / "store.db")
    await store.open()
    shipper = Shipper(spool, store, metrics)
    try:
        yield Trail(spool, trail, keyring, store, shipper, metrics)
    finally:
        await trail.stop()
        await store.close()
        spool.close()

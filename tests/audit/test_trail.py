"""The trail and its spool: group commit, contiguous chains across restarts, failures roll back cleanly."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.samples import Sample

from sentinel.audit.record import INTERACTION
from sentinel.audit.spool import Row
from sentinel.audit.trail import Entry
from sentinel.proxy.hooks import JournalUnavailable
from tests.audit.support import Trail, make_interaction, running_trail


def batch_samples(t: Trail) -> list[Sample]:
    (metric,) = t.metrics.batch_size.collect()
    return list(metric.samples)


async def test_concurrent_appends_share_commits_and_stay_contiguous(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_trail(tmp_path) as t:
        # Hold the first commit in its spool write until the other appends have all arrived.
        writing, release = threading.Event(), threading.Event()
        write = t.spool.write

        def held_write(rows: list[Row], checkpoint: dict[str, Any] | None = None, tiles: Any = ()) -> None:
            writing.set()
            assert release.wait(60)
            write(rows, checkpoint, tiles)

        monkeypatch.setattr(t.spool, "write", held_write)
        first = t.trail.append([Entry(INTERACTION, interaction=make_interaction(1))])
        assert await asyncio.to_thread(writing.wait, 60)  # record 1's commit is in flight
        rest = [t.trail.append([Entry(INTERACTION, interaction=make_interaction(n))]) for n in range(2, 401)]
        release.set()
        await asyncio.gather(first, *rest)
        assert t.trail.head.seq == 400
        # 400 records, two fsyncs: everything that arrived during the first commit went in the next.
        commits = {s.name.removeprefix("sentinel_audit_commit_batch_records"): s for s in batch_samples(t)}
        assert commits["_count"].value == 2 and commits["_sum"].value == 400
        sizes = {s.labels["le"]: s.value for s in batch_samples(t) if s.name.endswith("_bucket")}
        assert (sizes["1.0"], sizes["256.0"], sizes["512.0"]) == (1, 1, 2)  # batches of 1 and of 399
        await t.ship()
        seqs = [link.seq async for link in t.store.chain_links("node-a")]
        assert seqs == list(range(1, 401))
        assert (await t.verify()).ok


async def test_chain_continues_after_a_restart(tmp_path: Path) -> None:
    async with running_trail(tmp_path) as t:
        await t.write(5)
    # Same spool, same key file: a new process picks up the head and the keys.
    from prometheus_client import CollectorRegistry

    from sentinel.audit.kek import LocalKeyFile
    from sentinel.audit.keyring import KeyRing
    from sentinel.audit.shipper import Shipper
    from sentinel.audit.spool import Spool
    from sentinel.audit.store.embedded import EmbeddedStore
    from sentinel.audit.trail import AuditMetrics, AuditTrail

    spool = Spool(tmp_path / "spool.db")
    await spool.run(spool.open)
    keyring = KeyRing(LocalKeyFile.load(tmp_path / "keys" / "kek.key"), spool)
    metrics = AuditMetrics(CollectorRegistry())
    trail = AuditTrail(spool, "node-a", metrics)
    await trail.start(keyring)
    assert trail.head.seq == 5
    assert metrics.unshipped == 5  # nothing was shipped before the "crash": it is all still here
    for n in range(6, 9):
        await trail.append([Entry(INTERACTION, interaction=make_interaction(n))])
    await trail.stop()
    store = EmbeddedStore(tmp_path / "store.db")
    await store.open()
    shipper = Shipper(spool, store, metrics)
    while await shipper.ship_once():
        pass
    keys = {k.kid: keyring.public_key(k.kid) for k in keyring.all_keys() if k.purpose == "signing"}
    from sentinel.audit.verify import verify

    report = await verify(store, keys.get)
    assert report.ok and report.records_checked == 8
    await store.close()
    spool.close()


async def test_a_failed_write_fails_the_batch_and_the_chain_stays_whole(tmp_path: Path) -> None:
    async with running_trail(tmp_path) as t:
        await t.write(3)
        # The disk "fills up": SQLite is told it may not grow the database any further.
        db = t.spool.db
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        await t.spool.run(lambda: db.execute(f"PRAGMA max_page_count = {pages}"))
        big = make_interaction(4, request_messages=[{"role": "user", "content": "x" * 200_000}])
        with pytest.raises(JournalUnavailable, match="full"):
            await t.trail.append([Entry(INTERACTION, interaction=big)])
        assert t.trail.head.seq == 3  # the head did not move past what is durable
        await t.spool.run(lambda: db.execute("PRAGMA max_page_count = 1073741823"))
        await t.write(2, start=5)
        assert t.trail.head.seq == 5
        await t.ship()
        assert (await t.verify()).ok


async def test_nothing_unsealed_after_stop(tmp_path: Path) -> None:
    async with running_trail(tmp_path, checkpoint_every=1000) as t:
        await t.write(7)
        await t.trail.stop()
        await t.ship()
        (node,) = (await t.verify()).instances
        assert node.last_checkpoint_seq == 7 and node.unsealed == 0


def test_spool_rows_are_the_stored_form(tmp_path: Path) -> None:
    async def run() -> None:
        async with running_trail(tmp_path) as t:
            await t.write(1)

    asyncio.run(run())
    db = sqlite3.connect(tmp_path / "spool.db")
    (body,) = db.execute("SELECT body FROM records").fetchone()
    assert body.endswith(b'"}') and b'"hash":"' in body[-80:]
    assert b"prompt 1" not in body and b"answer 1" not in body

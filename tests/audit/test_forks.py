"""Several instances against one Elasticsearch: a retried batch is a duplicate, another writer's record
under our id is a fork (counted, logged, kept in the spool, listed by `sentinel audit forks`), and the
documented deployment (one instance id and data directory each) verifies every chain.

Elasticsearch cannot run here; tests/support/elasticsearch.py speaks the documented subset, on a real
socket, with the official client."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from elasticsearch import AsyncElasticsearch
from prometheus_client import CollectorRegistry

from sentinel.audit.record import INTERACTION, digest, encode, stored_hashes
from sentinel.audit.service import AuditService, stored_public_keys
from sentinel.audit.store import AuditStore, Fork
from sentinel.audit.store.elasticsearch import ElasticsearchStore
from sentinel.audit.store.embedded import EmbeddedStore
from sentinel.audit.trail import Entry
from sentinel.audit.verify import verify
from tests.audit.support import make_interaction, running_trail
from tests.conftest import make_settings
from tests.support.elasticsearch import FakeElasticsearch, running_elasticsearch


def event_doc(seq: int, actor: str, instance: str = "node-a") -> tuple[str, bytes]:
    """A record in its stored form; `actor` makes two records under one id differ."""
    doc: dict[str, Any] = {
        "doc_id": f"{instance}:{seq}",
        "instance": instance,
        "seq": seq,
        "kind": "event",
        "schema_version": 1,
        "recorded_at": 1_795_000_000.0 + seq,
        "prev_hash": "0" * 64,
        "event": {"type": "test", "actor": actor, "details": {}, "time": 1_795_000_000.0 + seq},
    }
    doc["hash"] = digest(doc)
    return doc["doc_id"], encode(doc)


@asynccontextmanager
async def opened(kind: str, tmp_path: Path) -> AsyncIterator[AuditStore]:
    if kind == "embedded":
        embedded = EmbeddedStore(tmp_path / "store.db")
        await embedded.open()
        try:
            yield embedded
        finally:
            await embedded.close()
        return
    async with running_elasticsearch() as es:
        store = ElasticsearchStore(AsyncElasticsearch([es.url]))
        try:
            yield store
        finally:
            await store.close()


@pytest.mark.parametrize("kind", ["embedded", "elasticsearch"])
async def test_a_retried_batch_is_a_duplicate_and_another_record_under_an_id_a_fork(kind: str, tmp_path: Path) -> None:
    async with opened(kind, tmp_path) as store:
        batch = [event_doc(seq, "first writer") for seq in (1, 2, 3)]
        assert await store.put_records(batch) == []
        assert await store.put_records(batch) == []  # a retry: everything already there, the same

        theirs = stored_hashes(batch[1][1])[0]
        other = event_doc(2, "second writer")
        ours = stored_hashes(other[1])[0]
        assert ours != theirs
        forks = await store.put_records([batch[0], other, event_doc(4, "second writer")])
        assert forks == [Fork("node-a:2", ours, theirs)]

        kept = await store.get("node-a:2")
        assert kept is not None and kept["hash"] == theirs  # the store keeps its own
        created = await store.get("node-a:4")
        assert created is not None and created["event"]["actor"] == "second writer"  # the rest landed


async def test_a_batch_landed_but_unanswered_ships_again_as_duplicates(tmp_path: Path) -> None:
    async with running_elasticsearch() as es, running_trail(tmp_path) as t:
        t.shipper.store = ElasticsearchStore(AsyncElasticsearch([es.url]))
        try:
            await t.write(5)
            # The keys, then the records, land but their answers are lost: the client sends each
            # again (as the shipper would on its next try) and gets 409s for what is already there.
            es.lose_bulk_responses = 2
            await t.ship()
            assert es.lose_bulk_responses == 0
        finally:
            await t.shipper.store.close()
        assert len(es.indices["sentinel-audit"].docs) == 5
        (forked,) = t.metrics.forked.collect()
        assert [sample.value for sample in forked.samples if sample.name.endswith("_total")] == [0.0]
        assert await t.spool.run(t.spool.forks) == []
        assert await t.spool.run(t.spool.backlog) == (0, None)


# -- two Sentinels, one Elasticsearch ---------------------------------------------------------------


class Node:
    """One `sentinel serve`'s audit trail as it builds it: its own data directory and registry; the
    deployment's one KEK, which every instance shares to read the keys the others store beside the
    records."""

    def __init__(self, tmp_path: Path, name: str, instance: str, es: FakeElasticsearch) -> None:
        settings = make_settings(
            tmp_path,
            "http://127.0.0.1:9",
            data_dir=tmp_path / name,
            instance_id=instance,
            key_file=tmp_path / "kek.key",
            elasticsearch={"url": es.url},
        )
        self.registry = CollectorRegistry()
        self.audit = AuditService(settings, self.registry, instance)

    def metric(self, name: str) -> float:
        return self.registry.get_sample_value(name) or 0.0

    async def record(self, first: int, count: int) -> None:
        """`count` interactions in one append: one durable batch, shipped together."""
        entries = [Entry(INTERACTION, interaction=make_interaction(n)) for n in range(first, first + count)]
        await self.audit.trail.append(entries)

    async def settled(self, predicate: Callable[[], bool], timeout: float = 60.0) -> None:
        """Wait for a state of the background shipper (nudged: no backoff or idle interval waited out)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            assert loop.time() < deadline, "condition not met in time"
            assert self.audit.shipper is not None
            self.audit.shipper.nudge()
            await asyncio.sleep(0.01)


@asynccontextmanager
async def started(node: Node, *, wait: bool = False) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """The node started (or, with `wait`, started by the function yielded), stopped on the way out."""
    if not wait:
        await node.audit.start()

    async def start() -> None:
        await node.audit.start()

    try:
        yield start
    finally:
        await node.audit.stop()


def spool_records(data_dir: Path) -> list[tuple[str, int, bytes]]:
    """(doc id, shipped state, stored form) of every record in a data directory's spool."""
    db = sqlite3.connect(f"file:{data_dir / 'audit' / 'spool.db'}?mode=ro", uri=True)
    try:
        return [(d, s, bytes(b)) for d, s, b in db.execute("SELECT doc_id, shipped, body FROM records ORDER BY seq")]
    finally:
        db.close()


def sentinel(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
    return subprocess.run(
        [sys.executable, "-m", "sentinel", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


@contextmanager
def errors_from_the_shipper(caplog: pytest.LogCaptureFixture) -> Iterator[list[logging.LogRecord]]:
    with caplog.at_level(logging.ERROR, logger="sentinel.audit.shipper"):
        records: list[logging.LogRecord] = []
        yield records
        records += [r for r in caplog.records if r.name == "sentinel.audit.shipper" and r.levelno >= logging.ERROR]


def doc_id(instance: str, seq: int) -> str:
    return f"{instance}:{seq:012d}"


async def test_two_writers_with_one_instance_id_fork_and_lose_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_elasticsearch() as es:
        first, second = Node(tmp_path, "a", "node-a", es), Node(tmp_path, "b", "node-a", es)
        async with started(first), started(second, wait=True) as go:
            await first.record(1, 5)
            await first.settled(lambda: first.metric("sentinel_audit_shipped_total") == 5)

            with errors_from_the_shipper(caplog) as errors:
                await go()  # a copied configuration: the same instance id, its own data directory
                await second.record(101, 8)
                await second.settled(lambda: second.metric("sentinel_audit_records_forked_total") == 5)
                await second.settled(lambda: second.metric("sentinel_audit_shipped_total") == 3)
            spool = second.audit.spool
            assert second.audit.metrics.unshipped == 0
            forks = await spool.run(spool.forks)
            assert [f.doc_id for f in forks] == [doc_id("node-a", seq) for seq in range(1, 6)]
            assert first.metric("sentinel_audit_records_forked_total") == 0
            a, b = spool_records(tmp_path / "a"), spool_records(tmp_path / "b")
            # Kept apart: never offered to the store again, never pruned.
            assert (await spool.run(lambda: spool.unshipped(500)))[1] == []
            await spool.run(lambda: spool.prune(float("inf")))
            assert await spool.run(spool.forks) == forks

            # One error for the batch, naming the doc ids and nothing of the content.
            assert len(errors) == 1, [r.getMessage() for r in errors]
            message = errors[0].getMessage()
            assert f"{doc_id('node-a', 1)}..{doc_id('node-a', 5)}" in message
            assert "sentinel audit forks" in message

            store = first.audit.store
            report = await verify(store, (await stored_public_keys(store)).get)
            assert not report.ok  # the chain in the store now interleaves two writers: verify says so too

    # Nothing lost: every record of both writers is in the store as written, or kept as a fork.
    stored = {key: doc["hash"] for key, doc in es.indices["sentinel-audit"].docs.items()}
    kept = {f.doc_id: f for f in forks}
    assert len(a) == 5 and len(b) == 8
    for key, shipped, body in a + b:
        ours = stored_hashes(body)[0]
        if shipped == 2:
            assert kept[key].ours == ours and kept[key].theirs == stored[key] != ours
        else:
            assert shipped == 1 and stored[key] == ours, key
    assert sorted(key for key, shipped, _ in b if shipped == 2) == sorted(kept)

    listed = sentinel(tmp_path / "b", "audit", "forks")
    assert listed.returncode == 1, listed.stderr
    assert all(doc_id("node-a", seq) in listed.stdout for seq in range(1, 6))
    assert doc_id("node-a", 6) not in listed.stdout
    as_json = sentinel(tmp_path / "b", "audit", "forks", "--json")
    assert as_json.returncode == 1
    assert [(f["doc_id"], f["seq"], f["ours"], f["theirs"]) for f in orjson.loads(as_json.stdout)] == [
        (f.doc_id, f.seq, f.ours, f.theirs) for f in forks
    ]
    clean = sentinel(tmp_path / "a", "audit", "forks")
    assert clean.returncode == 0 and "No forked audit records" in clean.stdout


async def test_several_instances_each_with_its_own_id_share_one_elasticsearch(tmp_path: Path) -> None:
    """The documented deployment: N proxies behind a load balancer, each its own instance id and data
    directory, one Elasticsearch; verify covers every chain."""
    async with running_elasticsearch() as es:
        nodes = [Node(tmp_path, name, f"node-{name}", es) for name in ("a", "b", "c")]
        async with started(nodes[0]), started(nodes[1]), started(nodes[2]):
            for n, node in enumerate(nodes):
                await node.record(100 * n, 4 + n)
            for n, node in enumerate(nodes):
                await node.settled(lambda node=node, n=n: node.metric("sentinel_audit_shipped_total") == 4 + n)
        # Stopped: each signed a final checkpoint and shipped it.

        store = ElasticsearchStore(AsyncElasticsearch([es.url]))
        try:
            report = await verify(store, (await stored_public_keys(store)).get)
        finally:
            await store.close()
    assert report.ok, report.findings
    assert sorted(c.instance for c in report.instances) == ["node-a", "node-b", "node-c"]
    assert report.records_checked == len(es.indices["sentinel-audit"].docs) == 4 + 5 + 6
    assert all(c.checkpoints_checked >= 1 and c.unsealed == 0 for c in report.instances)
    assert all(node.metric("sentinel_audit_records_forked_total") == 0 for node in nodes)

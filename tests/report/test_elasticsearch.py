"""Reports over Elasticsearch: `ElasticsearchQueries` (aggregations) answer exactly what the embedded
store's SQL answers for the same records, and a whole report gathered from Elasticsearch finds the same
planted facts. Elasticsearch itself cannot run here; `es_standin` speaks the documented subset."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from elasticsearch import AsyncElasticsearch

from sentinel.audit.store.elasticsearch import ElasticsearchStore
from sentinel.audit.store.embedded import EmbeddedStore
from sentinel.report.es_queries import ElasticsearchQueries
from sentinel.report.gather import ReportInputs, gather
from sentinel.report.issue import open_queries, public_keys
from sentinel.report.queries import EmbeddedQueries, percentile
from tests.report.conftest import Dataset
from tests.report.es_standin import running_standin


@asynccontextmanager
async def copied_to_elasticsearch(dataset: Dataset) -> AsyncIterator[ElasticsearchStore]:
    """The dataset's records, keys and checkpoints, as the shipper would have indexed them."""
    path = dataset.settings.resolve_path(dataset.settings.audit.store_path)
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    async with running_standin() as standin:
        standin.indices["sentinel-audit"] = [orjson.loads(b) for (b,) in db.execute("SELECT body FROM records")]
        standin.indices["sentinel-audit-keys"] = [orjson.loads(b) for (b,) in db.execute("SELECT body FROM keys")]
        standin.indices["sentinel-audit-checkpoints"] = [
            orjson.loads(b) for (b,) in db.execute("SELECT body FROM checkpoints")
        ]
        db.close()
        store = ElasticsearchStore(AsyncElasticsearch([standin.url]), prefix="sentinel-audit")
        try:
            yield store
        finally:
            await store.close()


async def test_aggregations_match_the_embedded_sql(clean: Dataset) -> None:
    # The clean dataset: in the planted one a record was altered in its body only, so the embedded
    # store's metadata columns (written at insert) and Elasticsearch (indexing the body) differ there.
    period = clean.period()
    embedded = EmbeddedStore(clean.settings.resolve_path(clean.settings.audit.store_path), read_only=True)
    await embedded.open()
    async with copied_to_elasticsearch(clean) as store:
        sql, agg = EmbeddedQueries(embedded), ElasticsearchQueries(store)

        def plain(items: list[Any]) -> list[tuple[Any, ...]]:
            return sorted(tuple(getattr(i, f) for f in i.__slots__) for i in items)

        assert plain(await agg.breakdown(period)) == plain(await sql.breakdown(period))
        assert plain(await agg.buckets(period, 3600, by_caller=True)) == plain(
            await sql.buckets(period, 3600, by_caller=True)
        )
        assert plain(await agg.buckets(period, 300, by_caller=False)) == plain(
            await sql.buckets(period, 300, by_caller=False)
        )
        assert await agg.users(period, 20) == await sql.users(period, 20)
        assert await agg.callers_before(period.since) == await sql.callers_before(period.since)
        assert await agg.event_counts(period) == await sql.event_counts(period)
        types = ("content_access", "admin_auth_failed")
        assert [e["doc_id"] for e in await agg.events(period, types, 100)] == [
            e["doc_id"] for e in await sql.events(period, types, 100)
        ]
        assert await agg.span() == await sql.span()
        for kind in ("ttft", "generation"):
            mine = {b.bin: b.count for b in await sql.latency_bins(period) if b.kind == kind}
            theirs = {b.bin: b.count for b in await agg.latency_bins(period) if b.kind == kind}
            assert sum(mine.values()) == sum(theirs.values())
            for q in (0.5, 0.95, 0.99):  # histogram keys may sit one bin lower (floating point): 1 ms at most
                assert abs((percentile(mine, q) or 0) - (percentile(theirs, q) or 0)) <= 0.0011
    await embedded.close()


async def test_a_report_from_elasticsearch_finds_the_planted_facts(planted: Dataset) -> None:
    async with copied_to_elasticsearch(planted) as store, open_queries(store) as (queries, second):
        keys = await store.keys()
        assert isinstance(queries, ElasticsearchQueries)
        inputs = ReportInputs(
            planted.settings,
            queries,
            second,
            planted.period(),
            public_keys(keys),
            keys,
            "cli:tester",
        )
        report = await gather(inputs)
    rules = {f["rule"] for f in report["findings"]}
    assert {
        "integrity.modified",
        "anomaly.off_hours",
        "anomaly.new_caller",
        "anomaly.error_burst",
        "anomaly.admin_auth_failed",
    } <= rules
    modified = next(f for f in report["findings"] if f["rule"] == "integrity.modified")
    assert modified["evidence"]["doc_id"] == planted.planted.tampered
    assert report["encryption"]["share_encrypted"] == 1.0
    assert report["phi"]["records_with_phi"] == planted.planted.phi_records

"""Reports over Elasticsearch: a report gathered from Elasticsearch counts exactly what one gathered from
the embedded store counts for the same records, and finds the same planted facts. Elasticsearch itself
cannot run here; `es_standin` speaks the documented subset."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from elasticsearch import AsyncElasticsearch

from sentinel.audit.store.elasticsearch import ElasticsearchStore
from sentinel.audit.store.embedded import EmbeddedStore
from sentinel.report.gather import ReportInputs, gather
from sentinel.report.issue import public_keys
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


async def _gathered(dataset: Dataset, store: Any) -> dict[str, Any]:
    keys = await store.keys()
    inputs = ReportInputs(dataset.settings, store, dataset.period(), public_keys(keys), keys, "cli:tester")
    return await gather(inputs)


async def test_a_report_from_elasticsearch_counts_what_the_embedded_store_does(clean: Dataset) -> None:
    """Both stores hand the verifier the same signed records, and the report counts those: every
    figure is the same, whichever store holds them."""
    embedded = EmbeddedStore(clean.settings.resolve_path(clean.settings.audit.store_path), read_only=True)
    await embedded.open()
    try:
        local = await _gathered(clean, embedded)
    finally:
        await embedded.close()
    async with copied_to_elasticsearch(clean) as store:
        remote = await _gathered(clean, store)
    assert local["activity"]["totals"]["calls"] == 200
    for section in ("activity", "service_levels", "access", "phi", "anomalies"):
        assert remote[section] == local[section], section
    assert remote["integrity"]["records_checked"] == local["integrity"]["records_checked"]
    assert remote["summary"] == local["summary"]


async def test_a_report_from_elasticsearch_finds_the_planted_facts(planted: Dataset) -> None:
    async with copied_to_elasticsearch(planted) as store:
        report = await _gathered(planted, store)
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

"""Elasticsearch sources: point-in-time + search_after export, restore into fresh indices, drill check.

Against `tests/support/elasticsearch.py`, a small documented-subset stand-in (no Elasticsearch
server can be installed here); the official `elasticsearch` client does the talking.
"""

from __future__ import annotations

from pathlib import Path

import orjson

from sentinel.backup.drill import RestoreDrill
from sentinel.backup.jobs import run_backup
from sentinel.backup.restore import Restorer
from sentinel.backup.restore_into import restore_into_elasticsearch
from sentinel.backup.sources.elasticsearch import es_client
from tests.backup.conftest import MakeContext
from tests.support.elasticsearch import FakeElasticsearch, Index, running_elasticsearch
from tests.support.loop import BackgroundLoop

MAPPINGS = {"properties": {"ts": {"type": "date"}, "user": {"type": "keyword"}}}


def seeded(servers: BackgroundLoop) -> FakeElasticsearch:
    es = servers.enter(running_elasticsearch())
    for day, count in (("2025.01.01", 2500), ("2025.01.02", 1200)):
        docs = {
            f"{day}-{i}": {"ts": f"2025-01-0{day[-1]}T00:{i // 60 % 60:02d}:{i % 60:02d}Z", "user": f"u{i % 7}"}
            for i in range(count)
        }
        es.indices[f"sentinel-audit-{day}"] = Index(MAPPINGS, docs)
    es.indices["unrelated"] = Index({}, {"x": {"a": 1}})
    return es


def test_indices_export_consistently_and_restore_into_fresh_indices(
    servers: BackgroundLoop, make_context: MakeContext, tmp_path: Path
) -> None:
    es = seeded(servers)
    es.index_during_search = "sentinel-audit-2025.01.01"  # writes keep arriving while it is exported
    source = {
        "kind": "elasticsearch",
        "name": "audit",
        "url": es.url,
        "indices": ["sentinel-audit-*"],
        "page_size": 500,
        "timestamp_field": "ts",
    }
    context = make_context(plans={"es": {"sources": [source]}})
    outcome = run_backup(context, "es")
    assert outcome.outcome == "success", outcome.error
    assert outcome.snapshot is not None
    meta = outcome.snapshot.source("audit").meta  # type: ignore[union-attr]
    assert meta["indices"] == {"sentinel-audit-2025.01.01": 2500, "sentinel-audit-2025.01.02": 1200}
    assert es.pits == {}  # every point in time was closed
    assert es.searches >= 2500 // 500 + 1200 // 500

    repo = context.repository("es")
    Restorer(repo).restore(outcome.snapshot, tmp_path / "r")
    lines = (tmp_path / "r/audit/sentinel-audit-2025.01.01/documents.ndjson").read_bytes().splitlines()
    assert len(lines) == 2500 and not any(b"late" in line for line in lines)  # the PIT view, nothing later
    assert len(es.indices["sentinel-audit-2025.01.01"].docs) > 2500
    definition = orjson.loads((tmp_path / "r/audit/sentinel-audit-2025.01.01/index.json").read_bytes())
    assert definition == {"mappings": MAPPINGS}

    es.index_during_search = None
    with es_client(es.url) as client:
        loaded = restore_into_elasticsearch(Restorer(repo), outcome.snapshot, "audit", client, suffix="-restored")
    assert loaded == {"sentinel-audit-2025.01.01-restored": 2500, "sentinel-audit-2025.01.02-restored": 1200}
    original = es.indices["sentinel-audit-2025.01.02"]
    restored = es.indices["sentinel-audit-2025.01.02-restored"]
    assert restored.docs == original.docs and restored.mappings == MAPPINGS

    report = RestoreDrill(context, "es").run()
    check = next(c for c in report.checks if c.name == "elasticsearch export")
    assert check.passed and "2500/2500" in check.detail and report.rpo_basis == "newest recovered record"


def test_elasticsearch_errors_fail_the_run_cleanly(servers: BackgroundLoop, make_context: MakeContext) -> None:
    es = seeded(servers)
    source = {"kind": "elasticsearch", "url": es.url, "indices": ["no-such-index"]}
    context = make_context(plans={"es": {"sources": [source]}})
    outcome = run_backup(context, "es")
    assert outcome.outcome == "failure" and "no index matches" in str(outcome.error)

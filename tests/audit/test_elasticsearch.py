"""The Elasticsearch layout Sentinel applies (`sentinel es setup`), against the documented-subset fake in
tests/support/elasticsearch.py (no Elasticsearch server can run here), with the official client."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sentinel.audit.store.elasticsearch import index_template
from tests.support.elasticsearch import FakeElasticsearch, running_elasticsearch
from tests.support.loop import BackgroundLoop


def test_es_setup_is_idempotent_and_lays_out_the_trail(servers: BackgroundLoop, tmp_path: Path) -> None:
    es: FakeElasticsearch = servers.enter(running_elasticsearch())
    env = {"SENTINEL_ELASTICSEARCH_URL": es.url, "SENTINEL_ELASTICSEARCH_RETENTION_DAYS": "2555", "PATH": "/usr/bin"}
    first = subprocess.run(
        [sys.executable, "-m", "sentinel", "es", "setup", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert first.returncode == 0, first.stderr
    assert "created data stream sentinel-audit" in first.stdout
    second = subprocess.run(
        [sys.executable, "-m", "sentinel", "es", "setup", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert second.returncode == 0 and "data stream sentinel-audit already exists" in second.stdout

    policy = es.policies["sentinel-audit"]["policy"]
    assert policy["phases"]["delete"]["min_age"] == "2555d"
    assert "rollover" in policy["phases"]["hot"]["actions"]
    template = es.templates["sentinel-audit"]
    assert template["data_stream"] == {} and template["index_patterns"] == ["sentinel-audit"]
    mappings = template["template"]["mappings"]
    assert mappings["properties"]["encrypted"] == {"type": "object", "enabled": False}  # stored, never indexed
    assert mappings["dynamic"] is False
    assert template["template"]["settings"]["index.lifecycle.name"] == "sentinel-audit"
    assert {"sentinel-audit", "sentinel-audit-keys", "sentinel-audit-checkpoints"} <= set(es.indices)


def test_no_content_field_is_mapped_for_search() -> None:
    properties = index_template("x")["template"]["mappings"]["properties"]
    interaction = properties["interaction"]["properties"]
    for name in ("request_messages", "response_text", "reasoning_text", "tool_calls", "error_message"):
        assert name not in interaction
    assert "user" not in interaction["caller"]["properties"] and "user_index" in interaction["caller"]["properties"]


def test_es_setup_reports_an_unreachable_cluster(tmp_path: Path) -> None:
    from tests.support.upstream import refused_port

    env = {
        "SENTINEL_ELASTICSEARCH_URL": f"http://127.0.0.1:{refused_port()}",
        "PATH": "/usr/bin",
        "SENTINEL_ELASTICSEARCH_REQUEST_TIMEOUT": "2",
    }
    result = subprocess.run(
        [sys.executable, "-m", "sentinel", "es", "setup", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 1 and "Elasticsearch setup failed" in result.stderr
    assert "Traceback" not in result.stderr

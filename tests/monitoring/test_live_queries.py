"""Every PromQL expression of the dashboards and rules, run against a real Prometheus scraping a real
Sentinel that carried real traffic: each must parse and return data (no typo'd metric or label).

The parts: Sentinel in front of a scripted upstream that also serves vLLM-style `/metrics`; a local
site serving a DCGM exporter page, Ollama's `/api/ps` and an OTLP endpoint that rejects spans (so the
dropped-spans series exists); Debian's Prometheus scraping Sentinel's admin `/metrics` every second
with `rules/sentinel.rules.yml` loaded. Traffic is sent twice, a few scrapes apart, so rates and
histogram quantiles have increases to work on.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
import yaml

from sentinel.monitoring.rules import ALERTS
from tests.conftest import Running
from tests.support.frames import JSON_HEADERS, SSE_HEADERS, chat_completion, vllm_chat_stream
from tests.support.gpu_sources import VLLM_METRICS, dcgm_metrics, ollama_ps
from tests.support.loop import BackgroundLoop
from tests.support.prometheus import Prometheus, running_prometheus
from tests.support.site import JSON, StaticSite, running_site
from tests.support.upstream import Script, ScriptedUpstream

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "rules" / "sentinel.rules.yml"

# Owned by issue 3 (audit trail) and issue 5 (backups and drills); not exported on this branch yet,
# so expressions using them are only required to parse. Tightened when they land.
PENDING_METRICS: frozenset[str] = frozenset()
"""Metric names whose owning feature has not landed yet (may only parse). Empty: every feature is in."""

RATE_INTERVAL = "1m"  # what Grafana's $__rate_interval becomes at a 1 s scrape interval and a short range


def dashboard_exprs() -> dict[str, str]:
    exprs = {}
    for path in sorted((ROOT / "dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                exprs[f"{path.stem} / {panel['title']} / {target['refId']}"] = target["expr"].replace(
                    "$__rate_interval", RATE_INTERVAL
                )
    return exprs


def rule_exprs() -> tuple[dict[str, str], dict[str, str]]:
    """(recording rules, alert rules) as written in the generated rule file."""
    recording, alerting = {}, {}
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            if "record" in rule:
                recording[rule["record"]] = rule["expr"]
            else:
                alerting[f"{rule['alert']} ({rule['labels']['severity']})"] = rule["expr"]
    return recording, alerting


def pending(expr: str) -> bool:
    return bool(set(re.findall(r"[a-z_:]+", expr)) & PENDING_METRICS)


@pytest.fixture
def site(servers: BackgroundLoop) -> StaticSite:
    return servers.enter(running_site())


def send_traffic(proxy: Running, rounds: int) -> None:
    for _ in range(rounds):
        for model in ("deepseek-r1", "qwen3"):
            requests.post(
                proxy.url + "/v1/chat/completions",
                json={"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True},
                timeout=10,
            ).raise_for_status()
        requests.post(
            proxy.url + "/v1/completions", json={"model": "deepseek-r1", "prompt": "hi"}, timeout=10
        ).raise_for_status()
        requests.post(
            proxy.url + "/v1/embeddings", json={"model": "bge-m3", "input": "hi"}, timeout=10
        ).raise_for_status()
    # One failure per round of traffic: Ollama's native chat answering 500.
    requests.post(proxy.url + "/api/chat", json={"model": "deepseek-r1:70b", "messages": []}, timeout=10)


@pytest.mark.slow
def test_every_dashboard_and_rule_query_returns_data(
    upstream: ScriptedUpstream, site: StaticSite, start_sentinel: Callable[..., Running], tmp_path: Path
) -> None:
    upstream.script("/v1/models", Script(chunks=[b'{"object":"list","data":[]}']))
    upstream.script("/metrics", Script(headers={"Content-Type": "text/plain"}, chunks=[VLLM_METRICS.encode()]))
    upstream.script(
        "/v1/chat/completions",
        Script(headers=SSE_HEADERS, chunks=vllm_chat_stream(["think"], ["a", "b"], usage=(12, 34), reasoning_tokens=5)),
    )
    upstream.script("/v1/completions", Script(headers=JSON_HEADERS, chunks=[chat_completion("ok")]))
    upstream.script(
        "/v1/embeddings",
        Script(
            headers=JSON_HEADERS, chunks=[b'{"object":"list","data":[{"index":0,"embedding":[0.1]}],"model":"bge-m3"}']
        ),
    )
    upstream.script("/api/chat", Script(status=500, chunks=[b'{"error":"llama runner process has terminated"}']))
    site.page("/metrics", dcgm_metrics([(72000, 8951, 568), (10, 80939, 570)]))
    site.page("/api/ps", ollama_ps(("deepseek-r1:70b", 42_000_000_000, 21_000_000_000)), JSON)
    site.page("/v1/traces", b'{"code":3,"message":"rejected for the test"}', JSON, status=400)

    record_backup_history(tmp_path / "data")
    record_verify_history(tmp_path / "data")
    proxy = start_sentinel(
        upstream.url,
        gpu={"sources": ["vllm", "ollama", "dcgm"], "ollama_url": site.url, "dcgm_url": site.url + "/metrics"},
        tracing={"otlp_endpoint": site.url + "/v1/traces"},
        # serve shows the recorded checks and runs none; its anchor is down (its metrics show it)
        audit={
            "verify_in_serve": False,
            "anchor": {
                "endpoint_url": "http://127.0.0.1:9",
                "bucket": "anchors",
                "access_key_id": "test",
                "secret_access_key": "test",
                "max_attempts": 1,
                "connect_timeout": 0.5,
            },
        },
    )
    admin = proxy.admin_url.removeprefix("http://")

    with running_prometheus(tmp_path / "prometheus", admin, [RULES]) as prom:
        prom.wait_for('up{job="sentinel"}', lambda v: v == 1)
        send_traffic(proxy, rounds=2)  # creates the series
        proxy.records(9)
        prom.wait_for("sum(sentinel_requests_total)", lambda v: v == 9)
        prom.wait_for("count(sentinel_gpu_source_up == 1)", lambda v: v == 3)
        dropped = prom.wait_for('sum(sentinel_trace_spans_dropped_total{reason="rejected"})', lambda v: v > 0)
        send_traffic(proxy, rounds=3)  # increases the rates and quantiles work on
        proxy.records(9 + 13)
        prom.wait_for("sum(sentinel_requests_total)", lambda v: v == 22)
        prom.wait_for('sum(sentinel_trace_spans_dropped_total{reason="rejected"})', lambda v: v > (dropped or 0))
        prom.wait_for("count(job_model:gen_ai_server_time_to_first_token_seconds:p95_5m >= 0)", lambda v: v == 2)

        recording, alerting = rule_exprs()
        alert_queries = {f"{a.name} ({a.severity}) query": a.query for a in ALERTS}
        # What Grafana-managed copies evaluate: 0/1 for every series (unless a clause removes them all).
        grafana_queries = {f"{a.name} ({a.severity}) grafana": a.bool_expr for a in ALERTS if not a.unless}
        checked = {**dashboard_exprs(), **recording, **alert_queries, **grafana_queries}
        assert len(checked) > 60

        no_data = {}
        for name, expr in checked.items():
            answer = prom.query(expr)
            assert answer["status"] == "success", f"{name}: {expr}\n{answer.get('error')}"
            finite = [s for s in answer["data"]["result"] if math.isfinite(float(s["value"][1]))]
            if not finite and not pending(expr):
                no_data[name] = expr
        assert not no_data, "queries that returned no data:\n" + "\n".join(f"{k}: {v}" for k, v in no_data.items())

        parse_only = {**alerting, **{f"{a.name} ({a.severity}) grafana": a.bool_expr for a in ALERTS if a.unless}}
        for name, expr in parse_only.items():  # comparisons: must parse; they hold or not
            answer = prom.query(expr)
            assert answer["status"] == "success", f"{name}: {expr}\n{answer.get('error')}"

        check_rules_evaluate(prom, len(recording) + len(alerting))
        check_values(prom)


def record_backup_history(data_dir: Path) -> None:
    """Backups and drills run in their own processes and leave their outcomes in the run log that
    /metrics reads; write one of each as they would (a success, a failure, a passed drill), and what the
    last look at the repository found (a snapshot the signed index names is missing)."""
    import time

    from sentinel.backup.state import PlanHealth, RunLog, RunRecord

    log = RunLog(data_dir / "backup" / "state.db")
    now = time.time()
    log.record(
        RunRecord("backup", "default", now - 300, now - 290, "success", size=10_000, uploaded=2_000, snapshot="s1")
    )
    log.record(RunRecord("backup", "default", now - 200, now - 199, "failure", error="S3 unreachable"))
    log.record(
        RunRecord("drill", "default", now - 100, now - 60, "success", rto=40, rpo=300, passed=True, report="r.json")
    )
    log.saw_health([PlanHealth("default", missing=1, lost=1)], now=now - 60)


def record_verify_history(data_dir: Path) -> None:
    """Scheduled verification checks run in their own processes and leave their outcomes in the
    state file that /metrics reads; write what they would (a clean incremental, a full with a finding)."""
    import time

    from sentinel.audit.watch import CheckHistory, CheckRun, StateFile, VerifyState

    now = time.time()
    incremental = CheckRun(now - 120, now - 119, "ok", records=40)
    full = CheckRun(now - 600, now - 540, "findings", records=900, findings={"modified": 1})
    StateFile(data_dir / "audit" / "verify-state.json").save(
        VerifyState(
            scheduled_since=now - 3600,
            heads={"node-a": (900, "0" * 64)},
            checks={"incremental": CheckHistory(incremental, incremental, 940), "full": CheckHistory(full, full, 900)},
        )
    )


def check_rules_evaluate(prom: Prometheus, count: int) -> None:
    """Prometheus loaded every rule from the file and evaluated each without error."""
    rules = prom.rules()
    assert len(rules) == count
    broken = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not broken, broken


def check_values(prom: Prometheus) -> None:
    """A few numbers the traffic fixes exactly: the scrape carried Sentinel's own counts."""
    assert prom.value('sum(sentinel_requests_total{outcome="error",error_type="upstream_5xx"})') == 2
    assert prom.value('sum(sentinel_request_duration_seconds_count{stream="true"})') == 10
    assert prom.value('sum(sentinel_tokens_total{gen_ai_token_type="reasoning"})') == 50
    assert prom.value('sentinel_gpu_kv_cache_usage_ratio{source="vllm"}') == 0.6875
    assert prom.value('sentinel_gpu_model_vram_ratio{source="ollama"}') == 0.5
    assert prom.value('sentinel_backup_snapshots_missing{plan="default"}') == 1
    ratio = prom.value("job:sentinel_request_errors:ratio_rate5m")
    assert ratio is not None and 0 < ratio < 1

"""Prometheus metrics read back from each test's own registry."""

from __future__ import annotations

from collections.abc import Callable

import requests
from prometheus_client import CollectorRegistry

from sentinel.interaction import Interaction, Operation, Outcome, Usage
from sentinel.telemetry.metrics import ModelLabels, ProxyMetrics
from tests.conftest import Running
from tests.support.frames import SSE_HEADERS, vllm_chat_stream
from tests.support.upstream import Script, ScriptedUpstream


def test_metrics_after_real_traffic(upstream: ScriptedUpstream, proxy: Running) -> None:
    upstream.script(
        "/v1/chat/completions",
        Script(headers=SSE_HEADERS, chunks=vllm_chat_stream(["r"], ["a", "b"], usage=(10, 20), reasoning_tokens=1)),
    )
    for _ in range(3):
        requests.post(
            proxy.url + "/v1/chat/completions",
            json={"model": "deepseek-r1", "messages": [], "stream": True},
            timeout=30,
        ).raise_for_status()
    upstream.script("/v1/embeddings", Script(status=500, chunks=[b'{"error":{"message":"boom"}}']))
    requests.post(proxy.url + "/v1/embeddings", json={"model": "bge", "input": "x"}, timeout=30)
    proxy.records(4)

    chat = {"gen_ai_operation_name": "chat", "gen_ai_request_model": "deepseek-r1"}
    assert proxy.metric("gen_ai_server_request_duration_seconds_count", **chat, error_type="") == 3
    assert proxy.metric("gen_ai_server_time_to_first_token_seconds_count", **chat) == 3
    assert proxy.metric("gen_ai_client_token_usage_sum", **chat, gen_ai_token_type="input") == 30
    assert proxy.metric("gen_ai_client_token_usage_sum", **chat, gen_ai_token_type="output") == 60
    assert proxy.metric("sentinel_tokens_total", **chat, gen_ai_token_type="reasoning") == 3
    assert proxy.metric("sentinel_requests_total", **chat, status_class="2xx", outcome="ok", error_type="") == 3
    assert (
        proxy.metric(
            "sentinel_requests_total",
            gen_ai_operation_name="embeddings",
            gen_ai_request_model="bge",
            status_class="5xx",
            outcome="error",
            error_type="upstream_5xx",
        )
        == 1
    )
    assert proxy.metric("sentinel_errors_total", gen_ai_operation_name="embeddings", error_type="upstream_5xx") == 1
    assert proxy.metric("sentinel_proxy_overhead_seconds_count", gen_ai_operation_name="chat") == 3
    assert proxy.metric("sentinel_requests_in_flight") == 0
    assert proxy.metric("sentinel_sink_written_total", sink="memory") == 4

    exposition = requests.get(proxy.admin_url + "/metrics", timeout=30).text
    assert 'gen_ai_server_request_duration_seconds_bucket{error_type="",gen_ai_operation_name="chat"' in exposition
    assert "sentinel_recorder_queue_depth 0.0" in exposition
    assert 'sentinel_sink_queue_depth{sink="memory"} 0.0' in exposition


def test_model_labels_are_bounded() -> None:
    labels = ModelLabels(limit=2)
    assert [labels(m) for m in ("a", "b", "c", "a", None)] == ["a", "b", "other", "a", "none"]
    fixed = ModelLabels(["deepseek-r1"])
    assert fixed("deepseek-r1") == "deepseek-r1" and fixed("gpt-attacker-" + "x" * 50) == "other"


def test_random_model_names_cannot_blow_up_cardinality() -> None:
    registry = CollectorRegistry()
    metrics = ProxyMetrics(registry, ModelLabels(limit=3))
    for n in range(500):
        metrics.observe(
            Interaction(
                id=str(n),
                started_at=0,
                method="POST",
                path="/v1/chat/completions",
                operation=Operation.CHAT,
                model_requested=f"model-{n}",
                status_code=200,
                outcome=Outcome.OK,
                usage=Usage(1, 1, 2, None, "usage"),
                duration_s=0.1,
            )
        )
    models = {
        s.labels["gen_ai_request_model"]
        for m in registry.collect()
        for s in m.samples
        if "gen_ai_request_model" in s.labels
    }
    assert models == {"model-0", "model-1", "model-2", "other"}


def test_health_and_readiness(upstream: ScriptedUpstream, start_sentinel: Callable[..., Running]) -> None:
    upstream.script("/v1/models", Script(chunks=[b"{}"]))
    proxy = start_sentinel(upstream.url)
    assert requests.get(proxy.admin_url + "/healthz", timeout=30).json()["status"] == "ok"
    ready = requests.get(proxy.admin_url + "/readyz", timeout=30)
    assert ready.status_code == 200 and ready.json()["checks"]["upstream"]["ok"] is True


def test_not_ready_while_upstream_unreachable(start_sentinel: Callable[..., Running]) -> None:
    from tests.conftest import wait_until
    from tests.support.upstream import refused_port

    proxy = start_sentinel(f"http://127.0.0.1:{refused_port()}", upstream={"health_interval": 0.05})
    # The gauge is the last probe; readiness turns after upstream.ready_fail_after (3) failures in a row.
    wait_until(lambda: proxy.metric("sentinel_upstream_up") == 0)
    wait_until(lambda: proxy.sentinel.probe.failures >= 3)
    assert requests.get(proxy.admin_url + "/readyz", timeout=30).status_code == 503


def test_answer_duration_is_split_by_streaming_and_counts_only_ok(upstream: ScriptedUpstream, proxy: Running) -> None:
    from tests.support.frames import chat_completion

    upstream.script("/v1/chat/completions", Script(headers=SSE_HEADERS, chunks=vllm_chat_stream(["r"], ["a"])))
    requests.post(proxy.url + "/v1/chat/completions", json={"model": "m", "stream": True}, timeout=30)
    upstream.script("/v1/chat/completions", Script(chunks=[chat_completion("hi")]))
    requests.post(proxy.url + "/v1/chat/completions", json={"model": "m"}, timeout=30)
    requests.post(proxy.url + "/v1/chat/completions", json={"model": "m"}, timeout=30)
    upstream.script("/v1/chat/completions", Script(status=503, chunks=[b'{"error":{"message":"busy"}}']))
    requests.post(proxy.url + "/v1/chat/completions", json={"model": "m"}, timeout=30)
    proxy.records(4)

    def count(stream: str) -> float | None:
        return proxy.metric("sentinel_request_duration_seconds_count", gen_ai_operation_name="chat", stream=stream)

    assert count("true") == 1
    assert count("false") == 2  # the 503 is an error, counted by the error rate, not as a latency
    assert (
        proxy.metric(
            "sentinel_request_duration_seconds_bucket", gen_ai_operation_name="chat", stream="false", le="300.0"
        )
        == 2
    )

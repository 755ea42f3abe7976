"""Spans for each request, checked through the SDK's in-memory exporter (the OTel SDK's own test tool)."""

from __future__ import annotations

from collections.abc import Callable

import requests
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tests.conftest import Running, wait_until
from tests.support.frames import SSE_HEADERS, vllm_chat_stream
from tests.support.upstream import Script, ScriptedUpstream, refused_port

SECRET_PROMPT = "my patient John Doe, SSN 123-45-6789"


def test_server_and_client_spans_follow_genai_conventions(
    upstream: ScriptedUpstream, start_sentinel: Callable[..., Running]
) -> None:
    exporter = InMemorySpanExporter()
    upstream.script(
        "/v1/chat/completions",
        Script(headers=SSE_HEADERS, chunks=vllm_chat_stream(["think"], ["answer"], usage=(5, 6))),
    )
    proxy = start_sentinel(upstream.url, span_processor=SimpleSpanProcessor(exporter))
    incoming_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    incoming_parent = "00f067aa0ba902b7"
    response = requests.post(
        proxy.url + "/v1/chat/completions",
        json={
            "model": "deepseek-r1",
            "messages": [{"role": "user", "content": SECRET_PROMPT}],
            "stream": True,
            "temperature": 0.5,
            "max_tokens": 99,
            "user": "end-user-1",
        },
        headers={"traceparent": f"00-{incoming_trace}-{incoming_parent}-01"},
        timeout=30,
    )
    assert response.status_code == 200
    record = proxy.record()
    wait_until(lambda: len(exporter.get_finished_spans()) == 2)
    spans = {span.kind: span for span in exporter.get_finished_spans()}
    server, client = spans[SpanKind.SERVER], spans[SpanKind.CLIENT]

    assert server.name == client.name == "chat deepseek-r1"
    assert f"{server.context.trace_id:032x}" == incoming_trace == record.trace_id
    assert server.parent is not None and f"{server.parent.span_id:016x}" == incoming_parent
    assert client.parent is not None and client.parent.span_id == server.context.span_id
    assert f"{server.context.span_id:016x}" == record.span_id
    # The upstream saw our CLIENT span as its parent, in the same trace.
    sent = upstream.seen[0].header("traceparent")
    assert sent == f"00-{incoming_trace}-{client.context.span_id:016x}-01"

    server_attrs = dict(server.attributes or {})
    assert server_attrs["gen_ai.operation.name"] == "chat" and server_attrs["gen_ai.request.model"] == "deepseek-r1"
    assert server_attrs["http.request.method"] == "POST" and server_attrs["url.path"] == "/v1/chat/completions"
    assert server_attrs["http.response.status_code"] == 200
    assert server_attrs["sentinel.interaction.id"] == record.id
    attrs = dict(client.attributes or {})
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "openai"
    assert attrs["gen_ai.request.model"] == "deepseek-r1"
    assert attrs["gen_ai.response.model"] == "deepseek-r1"
    assert attrs["gen_ai.request.temperature"] == 0.5 and attrs["gen_ai.request.max_tokens"] == 99
    assert attrs["gen_ai.usage.input_tokens"] == 5 and attrs["gen_ai.usage.output_tokens"] == 6
    assert attrs["gen_ai.response.finish_reasons"] == ("stop",)
    assert attrs["gen_ai.request.stream"] is True
    assert attrs["gen_ai.response.time_to_first_chunk"] == record.ttft_s
    assert attrs["server.address"] == "127.0.0.1" and attrs["server.port"] == int(upstream.url.rsplit(":", 1)[1])
    assert server.start_time <= client.start_time <= client.end_time <= server.end_time
    everything = repr([dict(s.attributes or {}) for s in (server, client)])
    for secret in ("John Doe", "123-45-6789", "think", "answer", "end-user-1"):
        assert secret not in everything  # no content, no raw end-user id on spans


def test_root_trace_when_no_traceparent_and_error_status(start_sentinel: Callable[..., Running]) -> None:
    exporter = InMemorySpanExporter()
    proxy = start_sentinel(f"http://127.0.0.1:{refused_port()}", span_processor=SimpleSpanProcessor(exporter))
    requests.post(proxy.url + "/v1/chat/completions", json={"model": "m", "messages": []}, timeout=30)
    record = proxy.record()
    wait_until(lambda: len(exporter.get_finished_spans()) >= 1)
    server = next(s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER)
    assert server.parent is None and f"{server.context.trace_id:032x}" == record.trace_id
    assert server.status.status_code is StatusCode.ERROR
    assert dict(server.attributes or {})["error.type"] == "upstream_unreachable"


def test_unsampled_parent_is_not_exported_but_propagated(
    upstream: ScriptedUpstream, start_sentinel: Callable[..., Running]
) -> None:
    exporter = InMemorySpanExporter()
    upstream.script("/v1/models", Script(chunks=[b"{}"]))
    proxy = start_sentinel(upstream.url, span_processor=SimpleSpanProcessor(exporter))
    trace = "0af7651916cd43dd8448eb211c80319c"
    requests.get(proxy.url + "/v1/models", headers={"traceparent": f"00-{trace}-b7ad6b7169203331-00"}, timeout=30)
    proxy.record()
    assert exporter.get_finished_spans() == ()
    sent = upstream.seen[0].header("traceparent")
    assert sent is not None and sent.startswith(f"00-{trace}-") and sent.endswith("-00")

"""The hand-written OTLP span encoding gives the SDK encoder's exact bytes, for every span shape Sentinel emits."""

from __future__ import annotations

import random
from typing import Any

import pytest
from opentelemetry import trace as trace_api
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import CollectorRegistry

from sentinel.interaction import Interaction, Operation, Outcome, Protocol, Usage
from sentinel.telemetry import otlp_proto
from sentinel.telemetry.otlp import OtlpSpanQueue
from sentinel.telemetry.tracing import SpanEmitter, SpanTimings, TraceStarter, _Resource


def sdk_bytes(spans: list[ReadableSpan]) -> bytes:
    data: bytes = sdk_encode_spans(spans).SerializeToString()
    return data


def interaction(rng: random.Random) -> Interaction:
    outcome = rng.choice(list(Outcome))
    return Interaction(
        id=f"{rng.getrandbits(64):016x}",
        started_at=1795891064.5,
        method=rng.choice(["POST", "GET"]),
        path=rng.choice(["/v1/chat/completions", "/api/chat", "/v1/models"]),
        protocol=rng.choice(list(Protocol)),
        operation=rng.choice(list(Operation)),
        provider=rng.choice(["openai", "ollama", "vllm"]),
        stream=rng.random() < 0.5,
        model_requested=rng.choice([None, "", "deepseek-r1", "modèle"]),
        model_returned=rng.choice([None, "deepseek-r1"]),
        sampling=rng.choice([{}, {"temperature": 0.5, "max_tokens": 99, "seed": -3, "top_p": 1, "top_k": True}]),
        finish_reason=rng.choice([None, "stop", "length"]),
        usage=rng.choice([Usage(), Usage(12, 34, 46, 7, "usage"), Usage(0, 0, 0, None, "ollama")]),
        ttft_s=rng.choice([None, 0.0, 0.0123]),
        status_code=rng.choice([200, 502, 0]),
        outcome=outcome,
        error_type=None if outcome is Outcome.OK else rng.choice(["upstream_timeout", "stream_error"]),
    )


@pytest.mark.parametrize("seed", range(60))
def test_emitted_spans_encode_to_the_sdk_bytes(seed: int) -> None:
    rng = random.Random(seed)
    captured: list[ReadableSpan] = []
    queue = OtlpSpanQueue("http://127.0.0.1:9/v1/traces", CollectorRegistry())
    queue.on_end = captured.append  # type: ignore[method-assign]
    base = Resource.create({"service.name": "sentinel", "service.version": "1"})
    emitter = SpanEmitter(queue, _Resource(base.attributes, base.schema_url))
    starter = TraceStarter()
    for _ in range(rng.randint(1, 6)):
        parent = None
        if rng.random() < 0.5:
            parent = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        trace = starter.start(parent, rng.choice([None, b"vendor=abc,other=1"]))
        upstream = rng.random() < 0.8
        timings = SpanTimings(10**18, 10**18 + 5_000_000, 10**18 + 100 if upstream else None, 10**18 + 4_000_000)
        emitter.emit(interaction(rng), trace, timings, rng.choice(["http://vllm:8000", "https://[::1]:8443/x", "u"]))
    assert otlp_proto.encode_spans(captured) == sdk_bytes(captured)


def span(
    attributes: dict[str, Any],
    *,
    resource: Resource | None = None,
    scope: InstrumentationScope | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    status: Status | None = None,
    name: str = "op",
) -> ReadableSpan:
    context = trace_api.SpanContext(1, 2, False, trace_api.TraceFlags(1))
    return ReadableSpan(
        name,
        context,
        None,
        resource or Resource.create({"service.name": "x"}),
        attributes,
        kind=kind,
        status=status or Status(StatusCode.OK),
        start_time=1,
        end_time=2**63 + 5,
        instrumentation_scope=scope,
    )


def test_odd_values_resources_and_scopes_encode_to_the_sdk_bytes() -> None:
    other = Resource({"host": "h", "n": 3}, schema_url="https://opentelemetry.io/schemas/1.21.0")
    scoped = InstrumentationScope("lib", None, "https://schema", {"a": 1})
    spans = [
        span(
            {
                "empty": "",
                "false": False,
                "zero": 0,
                "negative": -5,
                "big": 2**62,
                "float": -1.5,
                "bytes": b"\x00\xff",
                "none": None,
                "tuple": ("a", "b"),
                "mixed": [1, 2.5, True, "x", None],
                "map": {"k": "v", "nested": {"n": [1]}},
                "long": "x" * 20_000,
            },
            kind=SpanKind.PRODUCER,
        ),
        span({}, resource=other, scope=scoped, kind=SpanKind.CONSUMER, name=""),
        span({"a": 1}, resource=other, kind=SpanKind.SERVER, status=Status(StatusCode.ERROR, "broke")),
        span({"a": True}, scope=InstrumentationScope("", ""), status=Status(StatusCode.UNSET)),
    ]
    assert otlp_proto.encode_spans(spans) == sdk_bytes(spans)


def test_what_it_does_not_write_falls_back_to_the_sdk_encoder() -> None:
    unsupported = span({"ok": 1}).__class__(
        "with-event",
        trace_api.SpanContext(1, 2, False),
        events=(Event("e", {"x": 1}, timestamp=3),),
        start_time=1,
        end_time=2,
    )
    with pytest.raises(otlp_proto.Unsupported):
        otlp_proto.encode_spans([unsupported])
    with pytest.raises(otlp_proto.Unsupported):
        otlp_proto.encode_spans([span({"huge": 2**64})])

    queue = OtlpSpanQueue("http://127.0.0.1:9/v1/traces", CollectorRegistry())
    queue.on_end(unsupported)
    queue.encode_some()
    assert queue._encoded == [sdk_bytes([unsupported])]

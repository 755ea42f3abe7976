"""`OtlpSpanQueue` encoding: it keeps pace with the recorder however many spans one slice produced."""

from __future__ import annotations

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client import CollectorRegistry

from sentinel.telemetry.otlp import OtlpSpanQueue
from tests.telemetry.test_otlp_proto import span


def spans_in(queue: OtlpSpanQueue) -> int:
    request = ExportTraceServiceRequest.FromString(b"".join(queue._encoded))
    return sum(len(scope.spans) for resource in request.resource_spans for scope in resource.scope_spans)


def test_a_slice_encodes_what_the_last_recorder_slice_produced() -> None:
    registry = CollectorRegistry()
    queue = OtlpSpanQueue("http://127.0.0.1:9/v1/traces", registry, encode_slice=32)
    for n in range(250):  # a 5 ms catch-up slice of the recorder: ~125 exchanges, two spans each
        queue.on_end(span({"n": n}))
    queue.encode_some()
    assert spans_in(queue) == 250 and not queue._spans
    for n in range(10):
        queue.on_end(span({"n": n}))
    queue.encode_some()
    assert spans_in(queue) == 260
    assert registry.get_sample_value("sentinel_trace_spans_dropped_total", {"reason": "queue_full"}) is None

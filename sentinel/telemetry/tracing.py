"""OpenTelemetry traces: one SERVER span per request and one CLIENT span for its upstream call.

The request path only decides ids (honouring an incoming `traceparent`) and injects a
`traceparent` upstream; the spans themselves are built afterwards on the recorder task from
the exchange's timestamps, with exactly those ids, so tracing costs the request path next to
nothing. Attributes follow the GenAI semantic conventions; no prompt or response content ever
goes on a span.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry import trace as trace_api
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, Status, StatusCode

from sentinel import __version__
from sentinel.interaction import Interaction, Operation, Outcome

if TYPE_CHECKING:
    from sentinel.config import TracingSettings

_getrandbits = random.getrandbits
_TRACE_ID_LIMIT = (1 << 64) - 1


@dataclass(slots=True)
class TraceContext:
    """Ids for one request's trace, fixed when the request arrives."""

    trace_id: int
    span_id: int
    """The SERVER span's id."""
    upstream_span_id: int
    """The CLIENT span's id; it is the parent the upstream sees in `traceparent`."""
    parent_span_id: int | None
    sampled: bool
    tracestate: bytes | None = None

    @property
    def trace_id_hex(self) -> str:
        return f"{self.trace_id:032x}"

    @property
    def span_id_hex(self) -> str:
        return f"{self.span_id:016x}"

    def upstream_traceparent(self) -> bytes:
        flags = b"01" if self.sampled else b"00"
        return b"00-%032x-%016x-%s" % (self.trace_id, self.upstream_span_id, flags)


def _parse_traceparent(value: bytes) -> tuple[int, int, bool] | None:
    """W3C Trace Context `traceparent`: `version-traceid-parentid-flags`; None if not usable."""
    parts = value.strip().split(b"-")
    if len(parts) < 4 or len(parts[0]) != 2 or len(parts[1]) != 32 or len(parts[2]) != 16 or len(parts[3]) != 2:
        return None
    if parts[0] == b"ff" or (parts[0] == b"00" and len(parts) != 4):
        return None
    try:
        int(parts[0], 16)
        trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3], 16)
    except ValueError:
        return None
    if trace_id == 0 or span_id == 0:
        return None
    return trace_id, span_id, bool(flags & 1)


class TraceStarter:
    """Decides a request's trace ids on the request path; root sampling matches `TraceIdRatioBased`."""

    __slots__ = ("_bound",)

    def __init__(self, sample_ratio: float = 1.0) -> None:
        self._bound = TraceIdRatioBased.get_bound_for_rate(sample_ratio)

    def start(self, traceparent: bytes | None, tracestate: bytes | None) -> TraceContext:
        parent = _parse_traceparent(traceparent) if traceparent else None
        if parent is not None:
            trace_id, parent_span_id, sampled = parent
            return TraceContext(trace_id, _getrandbits(64), _getrandbits(64), parent_span_id, sampled, tracestate)
        trace_id = _getrandbits(128)
        return TraceContext(
            trace_id, _getrandbits(64), _getrandbits(64), None, (trace_id & _TRACE_ID_LIMIT) < self._bound
        )


class _PresetIds(IdGenerator):
    """Hands the SDK the ids the request path already chose (falls back to random ones)."""

    def __init__(self) -> None:
        self.trace_id: int | None = None
        self.span_id: int | None = None

    def generate_trace_id(self) -> int:
        value, self.trace_id = self.trace_id, None
        return value if value is not None else _getrandbits(128)

    def generate_span_id(self) -> int:
        value, self.span_id = self.span_id, None
        return value if value is not None else _getrandbits(64)


class SpanEmitter:
    """Builds the spans of finished interactions and hands them to the configured exporter."""

    def __init__(self, provider: TracerProvider, ids: _PresetIds) -> None:
        self._provider = provider
        self._ids = ids
        self._tracer = provider.get_tracer("sentinel", __version__)

    @classmethod
    def from_settings(cls, settings: TracingSettings, processor: SpanProcessor | None = None) -> SpanEmitter | None:
        """None when nothing would receive the spans (no exporter configured, no processor given)."""
        if processor is None:
            if not settings.exporting:
                return None
            if settings.exporter == "console":
                processor = BatchSpanProcessor(ConsoleSpanExporter())
            else:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

                processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint))
        ids = _PresetIds()
        provider = TracerProvider(
            resource=Resource.create({"service.name": settings.service_name, "service.version": __version__}),
            sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
            id_generator=ids,
        )
        provider.add_span_processor(processor)
        return cls(provider, ids)

    def emit(self, interaction: Interaction, trace: TraceContext, timings: SpanTimings, upstream: str) -> None:
        if not trace.sampled:
            return
        parent = None
        if trace.parent_span_id is not None:
            remote = trace_api.SpanContext(
                trace.trace_id,
                trace.parent_span_id,
                is_remote=True,
                trace_flags=trace_api.TraceFlags(trace_api.TraceFlags.SAMPLED),
            )
            parent = trace_api.set_span_in_context(trace_api.NonRecordingSpan(remote))
        attributes = span_attributes(interaction)
        name = span_name(interaction)
        self._ids.trace_id, self._ids.span_id = trace.trace_id, trace.span_id
        server = self._tracer.start_span(
            name, context=parent, kind=SpanKind.SERVER, attributes=attributes, start_time=timings.start_ns
        )
        if timings.upstream_start_ns is not None:
            self._ids.span_id = trace.upstream_span_id
            client_attrs = dict(attributes)
            host, _, port = upstream.partition("://")[2].partition("/")[0].partition(":")
            client_attrs["server.address"] = host
            if port.isdigit():
                client_attrs["server.port"] = int(port)
            client = self._tracer.start_span(
                name,
                context=trace_api.set_span_in_context(server),
                kind=SpanKind.CLIENT,
                attributes=client_attrs,
                start_time=timings.upstream_start_ns,
            )
            _set_status(client, interaction)
            client.end(end_time=timings.upstream_end_ns)
        _set_status(server, interaction)
        server.end(end_time=timings.end_ns)

    def shutdown(self) -> None:
        self._provider.shutdown()

    def force_flush(self) -> None:
        self._provider.force_flush()


@dataclass(slots=True)
class SpanTimings:
    start_ns: int
    end_ns: int
    upstream_start_ns: int | None
    upstream_end_ns: int | None


def span_name(interaction: Interaction) -> str:
    if interaction.operation is Operation.OTHER:
        return f"{interaction.method} {interaction.path}"
    model = interaction.model_requested
    return f"{interaction.operation.value} {model}" if model else interaction.operation.value


def span_attributes(i: Interaction) -> dict[str, Any]:
    """GenAI semantic-convention attributes: metadata only, never content, never the raw end-user id."""
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": i.operation.value,
        "gen_ai.provider.name": i.provider,
        "gen_ai.request.stream": i.stream,
        "http.request.method": i.method,
        "url.path": i.path,
        "http.response.status_code": i.status_code,
        "sentinel.interaction.id": i.id,
        "sentinel.outcome": i.outcome.value,
    }
    if i.model_requested:
        attrs["gen_ai.request.model"] = i.model_requested
    if i.model_returned:
        attrs["gen_ai.response.model"] = i.model_returned
    for key in ("temperature", "top_p", "top_k", "max_tokens", "seed", "frequency_penalty", "presence_penalty"):
        value = i.sampling.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            attrs[f"gen_ai.request.{key}"] = value
    if i.finish_reason:
        attrs["gen_ai.response.finish_reasons"] = [i.finish_reason]
    if i.usage.input_tokens is not None:
        attrs["gen_ai.usage.input_tokens"] = i.usage.input_tokens
    if i.usage.output_tokens is not None:
        attrs["gen_ai.usage.output_tokens"] = i.usage.output_tokens
    if i.usage.reasoning_tokens is not None:
        attrs["gen_ai.usage.reasoning.output_tokens"] = i.usage.reasoning_tokens
    if i.ttft_s is not None:
        attrs["gen_ai.response.time_to_first_chunk"] = i.ttft_s
    if i.error_type:
        attrs["error.type"] = i.error_type
    return attrs


def _set_status(span: trace_api.Span, interaction: Interaction) -> None:
    if interaction.outcome is Outcome.ERROR or interaction.outcome is Outcome.REJECTED:
        span.set_status(Status(StatusCode.ERROR, interaction.error_type))

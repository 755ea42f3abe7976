"""`build_interaction`: from the request path's raw `Exchange` to the typed `Interaction`."""

from __future__ import annotations

import hashlib
import zlib
from typing import Any

import orjson

from sentinel.capture import ollama, openai
from sentinel.capture.facts import RequestFacts, ResponseFacts
from sentinel.interaction import Caller, ErrorType, Interaction, Operation, Outcome, Protocol
from sentinel.proxy.exchange import Exchange

_PARSERS: dict[Protocol, Any] = {Protocol.OPENAI: openai, Protocol.OLLAMA: ollama}


def api_key_id(authorization: bytes | None) -> str | None:
    """A stable, non-reversible name for the caller's bearer token: `key-` + 12 hex of its SHA-256."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(b" ")
    secret = token.strip() if scheme.lower() == b"bearer" and token.strip() else authorization
    return "key-" + hashlib.sha256(secret).hexdigest()[:12]


def _request_facts(ex: Exchange) -> RequestFacts:
    body = ex.request_body
    if not body:
        return RequestFacts()
    claims_json = ex.request_content_type is not None and b"json" in ex.request_content_type
    if not claims_json and ex.operation is Operation.OTHER:
        return RequestFacts()
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return RequestFacts(json_valid=False)
    parser = _PARSERS.get(ex.protocol)
    if not isinstance(obj, dict) or parser is None or ex.operation is Operation.OTHER:
        return RequestFacts(json_valid=True)
    facts: RequestFacts = parser.parse_request(obj, ex.operation)
    return facts


def _decoded(ex: Exchange) -> list[bytes]:
    encoding = ex.response_content_encoding.lower()
    if not encoding or encoding == "identity":
        return ex.chunks
    if encoding in ("gzip", "x-gzip", "deflate"):
        inflater = zlib.decompressobj(zlib.MAX_WBITS | 32)
        try:
            return [inflater.decompress(chunk) for chunk in ex.chunks]
        except zlib.error:
            return []
    return []


def _response_facts(ex: Exchange, stream_expected: bool) -> ResponseFacts:
    if not ex.chunks:
        return ResponseFacts()
    chunks = _decoded(ex)
    content_type = ex.response_content_type
    if content_type.startswith("text/event-stream"):
        return openai.parse_sse(chunks)
    if content_type.startswith("application/x-ndjson") or (
        ex.protocol is Protocol.OLLAMA and stream_expected and len(chunks) > 1
    ):
        return ollama.parse_ndjson(chunks, ex.operation)
    parser = _PARSERS.get(ex.protocol, openai)
    body = b"".join(chunks)
    facts: ResponseFacts = parser.parse_body(body, ex.operation)
    return facts


def request_interaction(ex: Exchange, *, instance: str = "", provider: str = "auto") -> Interaction:
    """What is known before the upstream answers: the request alone (the strict journal's first record)."""
    request = _request_facts(ex)
    return _interaction(ex, request, ResponseFacts(), instance, provider, ex.t_start)


def build_interaction(ex: Exchange, *, instance: str = "", provider: str = "auto") -> Interaction:
    request = _request_facts(ex)
    response = _response_facts(ex, request.stream)
    t_end = ex.t_end if ex.t_end is not None else ex.t_start
    interaction = _interaction(ex, request, response, instance, provider, t_end)
    if ex.t_upstream_start is not None:
        interaction.upstream_duration_s = t_end - ex.t_upstream_start
        overhead = ex.t_upstream_start - ex.t_start
        if ex.t_upstream_headers is not None and ex.t_response_start is not None:
            overhead += max(0.0, ex.t_response_start - ex.t_upstream_headers)
        interaction.overhead_s = overhead
    elif ex.t_response_start is not None:
        interaction.overhead_s = ex.t_response_start - ex.t_start
    if request.stream and response.first_token_chunk is not None and response.first_token_chunk < len(ex.chunk_times):
        interaction.ttft_s = ex.chunk_times[response.first_token_chunk] - ex.t_start
    _judge(interaction, response)
    return interaction


def _interaction(
    ex: Exchange, request: RequestFacts, response: ResponseFacts, instance: str, provider: str, t_end: float
) -> Interaction:
    return Interaction(
        id=ex.id,
        started_at=ex.started_at,
        method=ex.method,
        path=ex.path,
        query=ex.query,
        instance=instance,
        trace_id=ex.trace.trace_id_hex,
        span_id=ex.trace.span_id_hex,
        protocol=ex.protocol,
        operation=ex.operation,
        provider=ex.protocol.value if provider == "auto" else provider,
        stream=request.stream,
        model_requested=request.model,
        model_returned=response.model,
        sampling=request.sampling,
        caller=Caller(
            user=request.user,
            api_key_id=api_key_id(ex.authorization),
            address=ex.client_address,
            user_agent=ex.user_agent,
        ),
        request_json_valid=request.json_valid,
        request_messages=request.messages,
        response_text=response.text(),
        reasoning_text=response.reasoning_text(),
        tool_calls=response.calls(),
        extra_choices=response.extra_choices(),
        finish_reason=response.finish_reason,
        usage=response.usage,
        duration_s=t_end - ex.t_start,
        status_code=ex.status,
        upstream_status=ex.upstream_status,
        outcome=ex.outcome,
        error_type=ex.error_type,
        error_message=ex.error_message,
        request_bytes=ex.request_bytes,
        response_bytes=ex.response_bytes,
        chunks=len(ex.chunks),
        content_truncated=ex.truncated,
        annotations=ex.annotations,
    )


def _judge(interaction: Interaction, response: ResponseFacts) -> None:
    """Upstream errors the request path could not see: 4xx/5xx answers and errors inside a 200 stream."""
    if interaction.outcome is not Outcome.OK:
        return
    status = interaction.upstream_status or 0
    if status >= 500:
        interaction.outcome, interaction.error_type = Outcome.ERROR, ErrorType.UPSTREAM_SERVER_ERROR
    elif status >= 400:
        interaction.outcome, interaction.error_type = Outcome.ERROR, ErrorType.UPSTREAM_CLIENT_ERROR
    elif response.error_message is not None:
        interaction.outcome, interaction.error_type = Outcome.ERROR, ErrorType.STREAM_ERROR
    if interaction.outcome is Outcome.ERROR and response.error_message:
        interaction.error_message = response.error_message[:2000]

"""`ProxyApp`: the pure-ASGI reverse proxy on the request path.

It forwards method, path, query, headers and body to the upstream unchanged (hop-by-hop headers
aside), forwards the response bytes as they arrive, and keeps a copy plus timestamps in an
`Exchange` that it hands to the recorder when the call ends. Nothing is awaited here but the
client and the upstream; parsing, metrics, spans and sinks all happen on the recorder task.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any
from typing import Protocol as TypingProtocol
from urllib.parse import quote

from sentinel.capture.routes import classify
from sentinel.connections import chunk_writer
from sentinel.cooperative import Foreground
from sentinel.interaction import ErrorType, Operation, Outcome, new_interaction_id
from sentinel.proxy.errors import error_body
from sentinel.proxy.exchange import Exchange
from sentinel.proxy.headers import HOP_BY_HOP, connection_tokens, response_headers
from sentinel.proxy.hooks import Journal, JournalUnavailable, Refusal, RequestHook, ResponseFilter, StopResponse
from sentinel.proxy.upstream import (
    UpstreamBroken,
    UpstreamPool,
    UpstreamResponse,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from sentinel.proxy.upstream_settings import UpstreamLimits, UpstreamTimeouts, UpstreamTls
from sentinel.telemetry.tracing import TraceStarter

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger("sentinel.proxy")

_perf = time.perf_counter
_now = time.time

STREAM_TYPES = (b"text/event-stream", b"application/x-ndjson")
_BUFFER_LIMIT = 4 * 1024 * 1024
"""Non-streamed responses up to this size are read whole and sent in one write."""
_DROP_REQUEST = HOP_BY_HOP | {b"host", b"content-length", b"expect", b"traceparent"}


class UpstreamAborted(Exception):
    """Raised after the response has started, to make the server cut the client connection.

    The client must see a truncated response as broken, not as a clean end.
    """


class ExchangeRecorder(TypingProtocol):
    def submit(self, exchange: Exchange) -> None: ...


class ProxyApp:
    """Forward every request to ``upstream_url`` and record each exchange.

    >>> app = ProxyApp("http://127.0.0.1:8000", recorder)   # doctest: +SKIP
    >>> uvicorn.run(app)                                      # doctest: +SKIP
    """

    def __init__(
        self,
        upstream_url: str,
        recorder: ExchangeRecorder,
        *,
        traces: TraceStarter | None = None,
        upstream_api_key: str | None = None,
        timeouts: UpstreamTimeouts | None = None,
        limits: UpstreamLimits | None = None,
        tls: UpstreamTls | None = None,
        max_body_bytes: int = 32 * 1024 * 1024,
        max_capture_bytes: int = 16 * 1024 * 1024,
        in_flight: Any = None,
        request_hooks: Sequence[RequestHook] = (),
        journal: Journal | None = None,
        foreground: Foreground | None = None,
    ) -> None:
        self.foreground = foreground
        self.upstream_url = upstream_url.rstrip("/")
        self.recorder = recorder
        self.traces = traces or TraceStarter()
        if upstream_api_key and ("\r" in upstream_api_key or "\n" in upstream_api_key):
            raise ValueError("the upstream API key contains a line break")
        self._auth = ("Bearer " + upstream_api_key).encode("latin-1") if upstream_api_key else None
        self._timeouts, self._limits, self._tls = timeouts, limits, tls
        self.max_body_bytes = max_body_bytes
        self.max_capture_bytes = max_capture_bytes
        self._in_flight = in_flight
        self.request_hooks = list(request_hooks)
        self.journal = journal
        self._upstream: UpstreamPool | None = None

    async def start(self) -> None:
        if self._upstream is None:
            self._upstream = UpstreamPool(
                self.upstream_url, timeouts=self._timeouts, limits=self._limits, tls=self._tls
            )

    @property
    def upstream_retries(self) -> dict[str, int]:
        """Requests sent again on a new upstream connection, by reason (see `UpstreamPool.retries`)."""
        return dict(self._upstream.retries) if self._upstream is not None else {}

    async def close(self) -> None:
        if self._upstream is not None:
            await self._upstream.close()
            self._upstream = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._handle(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1003})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        t_start = _perf()
        path: str = scope["path"]
        protocol, operation = classify(path)
        headers: list[tuple[bytes, bytes]] = []
        traceparent = tracestate = authorization = content_type = user_agent = None
        content_length = -1
        extra_hop: frozenset[bytes] = frozenset()
        for name, value in scope["headers"]:
            if name in _DROP_REQUEST:
                if name == b"traceparent":
                    traceparent = value
                elif name == b"content-length":
                    content_length = int(value) if value.isdigit() else -1
                elif name == b"connection":
                    extra_hop = connection_tokens(value)
                continue
            if name == b"authorization":
                authorization = value
                if self._auth is not None:
                    continue
            elif name == b"content-type":
                content_type = value
            elif name == b"user-agent":
                user_agent = value
            elif name == b"tracestate":
                tracestate = value
            headers.append((name, value))
        if extra_hop:
            headers = [(n, v) for n, v in headers if n not in extra_hop]

        trace = self.traces.start(traceparent, tracestate)
        headers.append((b"traceparent", trace.upstream_traceparent()))
        if self._auth is not None:
            headers.append((b"authorization", self._auth))
        client = scope.get("client")
        query: bytes = scope.get("query_string", b"")
        ex = Exchange(
            id=new_interaction_id(),
            started_at=_now(),
            t_start=t_start,
            method=scope["method"],
            path=path,
            query=query.decode("latin-1"),
            protocol=protocol,
            operation=operation,
            trace=trace,
            client_address=client[0] if client else None,
            user_agent=user_agent.decode("latin-1") if user_agent else None,
            authorization=authorization,
            request_content_type=content_type,
        )
        in_flight = self._in_flight
        if in_flight is not None:
            in_flight.inc()
        if self.foreground is not None:
            self.foreground.begin()
            ex.starting = True
        try:
            await self._exchange(ex, scope, headers, content_length, receive, send)
        finally:
            self._started(ex)
            if in_flight is not None:
                in_flight.dec()
            ex.t_end = _perf()
            self.recorder.submit(ex)

    def _started(self, ex: Exchange) -> None:
        """The response has started (or the exchange ended): recording need no longer wait for it."""
        if ex.starting and self.foreground is not None:
            ex.starting = False
            self.foreground.end()

    async def _exchange(
        self,
        ex: Exchange,
        scope: Scope,
        headers: list[tuple[bytes, bytes]],
        content_length: int,
        receive: Receive,
        send: Send,
    ) -> None:
        if content_length > self.max_body_bytes:
            await self._refuse_too_large(ex, send, content_length)
            return
        body = await self._read_body(ex, receive)
        if body is None:
            if not ex.client_disconnected:
                await self._refuse_too_large(ex, send, ex.request_bytes)
            return
        ex.request_body = body
        filters: list[ResponseFilter] = []
        for hook in self.request_hooks:
            refusal = hook.on_request(ex)
            if refusal is not None:
                await self._refuse(ex, send, refusal)
                return
            response_filter = hook.response_filter(ex)
            if response_filter is not None:
                filters.append(response_filter)
        if self.journal is not None:
            try:
                await self.journal.begin(ex)
            except JournalUnavailable as exc:
                ex.outcome = Outcome.REJECTED
                ex.error_type = ErrorType.AUDIT_UNAVAILABLE
                ex.error_message = f"the audit trail cannot record this request: {exc}"
                await self._respond(ex, send, 503, ErrorType.AUDIT_UNAVAILABLE, ex.error_message)
                return

        if filters:
            # A filter reads the answer's bytes: ask for them uncompressed (a compressed answer it
            # could not read would pass unfiltered).
            headers = [(name, value) for name, value in headers if name != b"accept-encoding"]
            headers.append((b"accept-encoding", b"identity"))
        main = asyncio.current_task()
        assert main is not None
        watcher = asyncio.get_running_loop().create_task(_watch_disconnect(receive, ex, main))
        try:
            await self._forward(ex, scope, headers, ex.request_body, send, filters)
        except asyncio.CancelledError:
            if ex.client_disconnected and main.cancelling():
                main.uncancel()
                ex.outcome = Outcome.ABORTED
                ex.error_type = ErrorType.CLIENT_DISCONNECT
                ex.error_message = "client disconnected before the response was complete"
                return
            raise
        finally:
            watcher.cancel()
            if self.journal is not None and not ex.journaled:
                await self._complete_after_failure(ex)

    async def _read_body(self, ex: Exchange, receive: Receive) -> bytes | None:
        """The whole request body, or None if it exceeds the limit or the client left."""
        message = await receive()
        body: bytes = message.get("body", b"")
        if message["type"] == "http.disconnect":
            ex.client_disconnected = True
            ex.outcome = Outcome.ABORTED
            ex.error_type = ErrorType.CLIENT_DISCONNECT
            return None
        ex.request_bytes = len(body)
        if not message.get("more_body", False):
            return body if ex.request_bytes <= self.max_body_bytes else None
        parts = [body]
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                ex.client_disconnected = True
                ex.outcome = Outcome.ABORTED
                ex.error_type = ErrorType.CLIENT_DISCONNECT
                return None
            chunk = message.get("body", b"")
            ex.request_bytes += len(chunk)
            if ex.request_bytes > self.max_body_bytes:
                return None
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)

    async def _forward(
        self,
        ex: Exchange,
        scope: Scope,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        send: Send,
        filters: list[ResponseFilter],
    ) -> None:
        pool = self._upstream
        if pool is None:
            await self.start()
            pool = self._upstream
            assert pool is not None
        raw_path: bytes | None = scope.get("raw_path")
        target = raw_path if raw_path else quote(ex.path).encode("ascii")
        query: bytes = scope.get("query_string", b"")
        if query:
            target += b"?" + query
        ex.t_upstream_start = _perf()
        try:
            resp = await pool.send(ex.method.encode("ascii"), target, headers, body)
            try:
                await self._answer(ex, resp, send, filters)
            finally:
                resp.release()  # a response not read to its end closes the connection: the upstream stops
        except UpstreamUnreachable as exc:
            await self._fail(ex, send, 502, ErrorType.UPSTREAM_UNREACHABLE, f"upstream unreachable: {exc.os_error}")
        except UpstreamTimeout as exc:
            await self._fail(ex, send, 504, ErrorType.UPSTREAM_TIMEOUT, f"upstream timed out: {exc}")
        except UpstreamBroken as exc:
            broken = ex.t_response_start is not None
            error_type = ErrorType.UPSTREAM_BROKEN_STREAM if broken else ErrorType.UPSTREAM_UNREACHABLE
            await self._fail(ex, send, 502, error_type, f"upstream connection failed: {exc}")

    async def _answer(self, ex: Exchange, resp: UpstreamResponse, send: Send, filters: list[ResponseFilter]) -> None:
        ex.upstream_status = ex.status = resp.status
        content_type_header = resp.header(b"content-type")
        content_type = content_type_header.decode("latin-1") if content_type_header else ""
        ex.response_content_type = content_type
        encoding = resp.header(b"content-encoding")
        ex.response_content_encoding = encoding.decode("latin-1") if encoding else ""
        out_headers = response_headers(resp.headers)
        length = resp.content_length
        streaming = content_type.startswith(("text/event-stream", "application/x-ndjson"))
        if not streaming and length is not None and length <= _BUFFER_LIMIT:
            payload = await resp.read()
            ex.t_upstream_headers = _perf()
            ex.response_bytes = len(payload)
            if ex.operation is not Operation.OTHER or resp.status >= 400:
                ex.chunks.append(payload)
                ex.chunk_times.append(ex.t_upstream_headers)
            if filters:
                try:
                    payload = _feed(filters, payload) + _finish(filters, b"")
                except StopResponse as stop:
                    await self._refuse(ex, send, stop.refusal)
                    return
                out_headers = _with_length(out_headers, len(payload))
            if self.journal is not None and not await self._complete(ex, send):
                return
            ex.t_response_start = _perf()
            ex.completed = True
            await send({"type": "http.response.start", "status": resp.status, "headers": out_headers})
            await send({"type": "http.response.body", "body": payload, "more_body": False})
            return
        ex.t_upstream_headers = _perf()
        ex.t_response_start = ex.t_upstream_headers
        if filters:
            out_headers = [(name, value) for name, value in out_headers if name != b"content-length"]
        await send({"type": "http.response.start", "status": resp.status, "headers": out_headers})
        self._started(ex)
        await self._stream_body(ex, resp, send, filters)

    async def _stream_body(
        self, ex: Exchange, resp: UpstreamResponse, send: Send, filters: list[ResponseFilter]
    ) -> None:
        capture = ex.operation is not Operation.OTHER or resp.status >= 400
        cap = self.max_capture_bytes
        chunks, times = ex.chunks, ex.chunk_times
        journal = self.journal is not None
        held = b""  # strict mode: the final frame waits until the record is durable
        stopped: bytes | None = None

        def keep(chunk: bytes) -> None:
            ex.response_bytes += len(chunk)
            if capture:
                if ex.captured_bytes < cap:
                    chunks.append(chunk)
                    times.append(_perf())
                    ex.captured_bytes += len(chunk)
                else:
                    ex.truncated = True

        if not filters and not journal and (write := chunk_writer(send)) is not None:
            # Nothing to look at before a chunk goes on: each is written to the client from the
            # upstream's read callback, without a task switch per chunk (12% less CPU per streamed
            # call, docs/benchmarks.md). A client that reads slowly, or leaves, ends the relay; the
            # loop below then sends the rest through ASGI, which waits for the client.
            def take(chunk: bytes) -> bool:
                if not write(chunk):
                    return False
                keep(chunk)
                return True

            await resp.relay(take)
        read = resp.read_some
        while chunk := await read():
            keep(chunk)
            if filters:
                try:
                    chunk = _feed(filters, chunk)
                except StopResponse as stop:
                    stopped = _stopped(ex, stop)
                    break  # leaving the upstream response unread closes it: the generation is cancelled
            if journal:
                if held:
                    await send({"type": "http.response.body", "body": held, "more_body": True})
                    held = b""
                if _looks_final(chunk):
                    held = chunk
                    continue
            if chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if stopped is not None:
            last = held + stopped
        else:
            try:
                last = held + _finish(filters, b"") if filters else held
            except StopResponse as stop:
                last = held + _stopped(ex, stop)
        if journal and not await self._complete(ex, send):
            return
        ex.completed = True
        await send({"type": "http.response.body", "body": last, "more_body": False})

    async def _complete(self, ex: Exchange, send: Send) -> bool:
        """Strict mode: make the finished record durable before the last byte goes out.

        If it cannot be made durable the client does not get a complete answer: a 503 when nothing
        was sent yet, a cut connection otherwise.
        """
        assert self.journal is not None
        ex.completed = True  # from here on a client disconnect must not cancel the write
        ex.t_end = _perf()
        ex.journaled = True
        try:
            await self.journal.complete(ex)
        except JournalUnavailable as exc:
            ex.outcome = Outcome.ERROR
            ex.error_type = ErrorType.AUDIT_UNAVAILABLE
            ex.error_message = f"the audit trail could not record the response: {exc}"
            if ex.t_response_start is None:
                await self._respond(ex, send, 503, ErrorType.AUDIT_UNAVAILABLE, ex.error_message)
                return False
            log.error("%s (interaction %s); cutting the client connection", ex.error_message, ex.id)
            raise UpstreamAborted(ex.error_message) from exc
        return True

    async def _fail(self, ex: Exchange, send: Send, status: int, error_type: ErrorType, message: str) -> None:
        ex.outcome = Outcome.ERROR
        ex.error_type = error_type
        ex.error_message = message
        if ex.t_response_start is not None:
            # Headers are out: the only honest signal left is to cut the connection.
            log.warning("upstream failed mid-response: %s (interaction %s)", message, ex.id)
            raise UpstreamAborted(message)
        await self._respond(ex, send, status, error_type, message)

    async def _complete_after_failure(self, ex: Exchange) -> None:
        """Strict mode, for calls that ended without a normal last byte (upstream failure, client gone,
        policy stop): the request is on record as started, so record how it ended too."""
        assert self.journal is not None
        ex.journaled = True
        ex.t_end = _perf()
        try:
            await asyncio.shield(self.journal.complete(ex))
        except (JournalUnavailable, asyncio.CancelledError) as exc:
            log.error("could not record the end of interaction %s: %r", ex.id, exc)

    async def _refuse_too_large(self, ex: Exchange, send: Send, size: int) -> None:
        ex.outcome = Outcome.REJECTED
        ex.error_type = ErrorType.REQUEST_TOO_LARGE
        message = f"request body of {size} bytes exceeds the limit of {self.max_body_bytes} bytes"
        ex.error_message = message
        await self._respond(ex, send, 413, ErrorType.REQUEST_TOO_LARGE, message)

    async def _refuse(self, ex: Exchange, send: Send, refusal: Refusal) -> None:
        ex.outcome = Outcome.REJECTED
        ex.error_type = refusal.error_type
        ex.error_message = refusal.message
        await self._respond(ex, send, refusal.status, refusal.error_type, refusal.message)

    async def _respond(self, ex: Exchange, send: Send, status: int, error_type: str, message: str) -> None:
        body = error_body(ex.protocol, status, error_type, message)
        ex.status = status
        ex.t_response_start = _perf()
        ex.completed = True
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})


def _feed(filters: list[ResponseFilter], chunk: bytes) -> bytes:
    for response_filter in filters:
        chunk = response_filter.feed(chunk)
    return chunk


def _finish(filters: list[ResponseFilter], tail: bytes) -> bytes:
    """Flush the filter chain: each filter's leftovers pass through the filters after it."""
    for response_filter in filters:
        tail = (response_filter.feed(tail) if tail else b"") + response_filter.finish()
    return tail


def _stopped(ex: Exchange, stop: StopResponse) -> bytes:
    """A filter ended a started response: record why; its tail is the last thing the client gets."""
    ex.outcome = Outcome.REJECTED
    ex.error_type = stop.refusal.error_type
    ex.error_message = stop.refusal.message
    return stop.tail


def _with_length(headers: list[tuple[bytes, bytes]], length: int) -> list[tuple[bytes, bytes]]:
    kept = [(name, value) for name, value in headers if name != b"content-length"]
    kept.append((b"content-length", b"%d" % length))
    return kept


def _looks_final(chunk: bytes) -> bool:
    """The last frame of a stream: SSE `data: [DONE]`, or Ollama's NDJSON object with `done: true`."""
    tail = chunk[-64:].rstrip()
    return tail.endswith(b"[DONE]") or (tail.endswith(b"}") and (b'"done":true' in chunk or b'"done": true' in chunk))


async def _watch_disconnect(receive: Receive, ex: Exchange, main: asyncio.Task[Any]) -> None:
    """Cancel the forwarding task when the client goes away before the response is complete."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            if not ex.completed:
                ex.client_disconnected = True
                main.cancel()
            return


class SuppressAbortTraceback(logging.Filter):
    """Keep uvicorn from logging a traceback for `UpstreamAborted`; the proxy already logged why."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], UpstreamAborted))

"""`UpstreamPool`: the proxy's HTTP/1.1 client for the model server.

Keep-alive connections, one request at a time each; a response is read straight from the
connection's protocol (httptools parses it, as uvicorn parses the client's side). Per streamed
chunk that is one parser callback and one future, where aiohttp's client took a stream reader, a
read-timeout timer and several more Python calls per chunk, and more work per new connection: with
64 concurrent streams on one core both the proxy's CPU per chunk and a new stream's first-byte
p99 dropped markedly (docs/benchmarks.md). It does what the proxy needs and no more: no
redirects, cookies, decompression or proxies.

Contract, as the proxy relies on it:
- `send` returns once the response head has arrived. It raises `UpstreamUnreachable` when no
  connection could be made (refused, DNS, TLS), `UpstreamTimeout` when connecting took longer
  than `timeouts.connect`, the server was silent for `timeouts.read` or no pooled connection came
  free within `timeouts.pool` (`UpstreamPoolTimeout`), `UpstreamBroken` when the connection failed
  or the answer was not HTTP. A request on a reused connection that fails before any response byte
  is retried once on a new connection: always for idempotent methods and requests carrying an
  `Idempotency-Key`; others (a chat completion's POST, which starts a generation) only where the
  server provably did not read the whole request — the connection had already been closed by the
  server when the request was to be sent, the request could not be written in full, or the server
  reset the connection (a server that closes with unread data sends RST; one that read the request
  and then ended sends FIN, and its request may be generating) — or where the connection had been
  idle for over half of `limits.keepalive_expiry` and failed within `STALE_WITHIN` of sending.
  `retries` counts the retries by reason.
- `UpstreamResponse.read_some` returns what has arrived since the last call (several network
  reads joined), waiting if nothing has; `b""` at the end of the body. Silence longer than
  `read_timeout` raises `UpstreamTimeout`, a connection lost before the end `UpstreamBroken`.
- `release` hands a fully read keep-alive connection back to the pool and closes any other
  (which is how a cancelled or abandoned call cancels the generation upstream). Idle
  connections are closed after `limits.keepalive_expiry`; at most `limits.max_connections` are open.
  Callers waiting for one are served first come, first served: a released connection, or the room
  a closed one leaves, goes straight to the oldest waiter, and newcomers queue behind waiters.
- Warm after a burst: for `limits.warm_window` seconds after the most connections were busy at
  once, idle ones that expire, or that the server closes after serving, are replaced by new ones
  opened in a background task (never on a request's path), up to that peak (at most
  `limits.max_warm`). A burst of new client connections then finds its upstream connections open:
  connecting to the upstream costs the proxy's core about as much as the rest of a request's way
  to its first byte (docs/benchmarks.md, issue #18). A failed background connect ends that round
  of warming; nothing retries it in a loop.
- A HEAD answer ends with its head; its connection is reused like any other.
- `UpstreamResponse.relay` hands the body to a callback from the connection's read callback, until
  the callback refuses a chunk (kept for `read_some`) or the body ends: a streamed answer costs no
  task switch per chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import select
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httptools

from sentinel.proxy.upstream_settings import UpstreamLimits, UpstreamTimeouts, UpstreamTls

log = logging.getLogger("sentinel.proxy.upstream")

_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
_NO_BODY_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE"})
"""Methods aiohttp sent without `Content-Length: 0` when there is no body; kept for parity."""
STALE_WITHIN = 1.0
"""Seconds after sending within which a failure, before any response byte, of a connection reused
after a long idle time (over half the keep-alive expiry) is taken for a stale keep-alive connection,
so that even a POST is sent again on a new one."""
_HIGH_WATER = 256 * 1024
"""Stop reading from the upstream when this much is waiting for a slow client."""


class UpstreamError(Exception):
    """The upstream call failed."""


class UpstreamUnreachable(UpstreamError):
    """No connection could be made."""

    def __init__(self, os_error: OSError) -> None:
        super().__init__(str(os_error))
        self.os_error = os_error


class UpstreamTimeout(UpstreamError, TimeoutError):
    """Connecting took too long, or the server went silent for longer than the read timeout."""


class UpstreamPoolTimeout(UpstreamTimeout):
    """Every pooled connection stayed busy for longer than the pool timeout."""


class UpstreamBroken(UpstreamError):
    """The connection failed, or the answer was not valid HTTP."""


def _peer_closed(conn: _Connection) -> bool:
    """Whether an idle connection has something to read before a request is sent on it: the
    server's FIN (or bytes nobody asked for) that the event loop has not handled yet."""
    transport = conn.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock.fileno()], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class _Connection(asyncio.Protocol):
    """One keep-alive connection and the response being read on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, read_timeout: float) -> None:
        self.loop = loop
        self.read_timeout = read_timeout
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.in_use = True
        self.idle_since = 0.0
        self.finished_at = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._read_paused = False
        self._watchdog: asyncio.TimerHandle | None = None
        self._last_read = 0.0
        self.served = False
        """Whether a whole answer came on this connection (a warm one has served none yet)."""
        self.on_idle_lost: Callable[[_Connection], None] | None = None
        """Called when the server closes the connection while it waits in the pool."""
        self.unwritten = False
        """Part of the request still waits to be written (the kernel did not take it all yet)."""
        self.reset = False
        """The server reset the connection (or refused what was written): it did not read all of it."""
        self.relay: Callable[[bytes], bool] | None = None
        """While set, body bytes go to it straight from the read callback (`UpstreamResponse.relay`)."""
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        self.received = False
        self.error: UpstreamError | None = None
        self.head_only = False
        self.buffer: list[bytes] = []
        self.buffered = 0
        self._interim = False

    # -- asyncio.Protocol -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # Told (resume_writing) the moment a request is wholly written: whether the server may have
        # read all of it decides if a failed POST may be sent again.
        self.transport.set_write_buffer_limits(high=0)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        if not self.in_use:
            self.close()  # bytes nobody asked for, on an idle connection: not safe to reuse
            return
        self.received = True
        self._last_read = self.loop.time()
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._fail(UpstreamBroken(f"invalid HTTP response from upstream: {exc!r}"))
            self.close()

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reset = isinstance(exc, (ConnectionResetError, BrokenPipeError))
        self._stop_watchdog()
        if self.head_done and not self.complete and self.error is None and self._until_close() and exc is None:
            self.complete = True  # a body delimited by an orderly end of the connection (HTTP/1.0 style)
        elif not self.complete and self.error is None:
            reason = f": {exc!r}" if exc is not None else ""
            self.error = UpstreamBroken(f"upstream closed the connection before the response was complete{reason}")
        self._wake()
        if not self.in_use and self.on_idle_lost is not None:
            self.on_idle_lost(self)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if not self.closed:
            self.unwritten = False
        self._wake()

    # -- httptools callbacks --------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            if status == 101:  # the proxy never asks to switch protocols (Upgrade is hop-by-hop)
                self._fail(UpstreamBroken("upstream switched protocols"))
                return
            self._interim = True  # 103 Early Hints and the like: the real answer follows
            self.headers = []
            return
        self.status = status
        self.head_done = True
        if self.head_only:
            # A HEAD answer has no body, whatever its Content-Length says, and httptools cannot be told:
            # it ends here, and a new parser takes the connection's next answer.
            self.complete = True
            self.finished_at = self.loop.time()
            self.keep_alive = self.parser.should_keep_alive()
            self.parser = httptools.HttpResponseParser(self)
            self._stop_watchdog()
        self._wake()

    def on_body(self, body: bytes) -> None:
        relay = self.relay
        if relay is not None:
            if relay(body):
                return
            self.relay = None  # not taken (the client reads slowly, or left): buffered, and the reader woken
        self.buffer.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self.complete = True
        self.finished_at = self.loop.time()  # the server's keep-alive clock starts now, not at release
        self.keep_alive = self.parser.should_keep_alive()  # only valid inside the callback
        self.served = True
        self._stop_watchdog()
        self._wake()

    # -- used by the pool and the response --------------------------------------------------------
    def _until_close(self) -> bool:
        for name, _ in self.headers:
            lower = name.lower()
            if lower == b"content-length" or lower == b"transfer-encoding":
                return False
        return True

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _fail(self, error: UpstreamError) -> None:
        if self.error is None and not self.complete:
            self.error = error
        self._wake()

    async def wait(self) -> None:
        """Until something happens on the connection (data, end, error, writable again)."""
        waiter = self._waiter = self.loop.create_future()
        await waiter

    def start_watchdog(self) -> None:
        self._last_read = self.loop.time()
        self._watchdog = self.loop.call_at(self._last_read + self.read_timeout, self._check_silence)

    def _check_silence(self) -> None:
        # One timer per silence period, not one per chunk: re-armed from the last read.
        self._watchdog = None
        if self.complete or self.closed:
            return
        silent_until = self._last_read + self.read_timeout
        now = self.loop.time()
        if self._read_paused:
            silent_until = now + self.read_timeout  # waiting for our own client is not the server's silence
        if now < silent_until:
            self._watchdog = self.loop.call_at(silent_until, self._check_silence)
            return
        self._fail(UpstreamTimeout(f"upstream sent nothing for {self.read_timeout:g}s"))
        self.close()

    def _stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def take(self) -> bytes:
        buffer = self.buffer
        data = buffer[0] if len(buffer) == 1 else b"".join(buffer)
        buffer.clear()
        self.buffered = 0
        if self._read_paused and self.transport is not None:
            self._read_paused = False
            self.transport.resume_reading()
        return data

    def close(self) -> None:
        self.closed = True
        self._stop_watchdog()
        if self.transport is not None:
            self.transport.close()

    def reusable(self) -> bool:
        return (
            self.complete
            and self.error is None
            and not self.closed
            and not self.buffer
            and self.keep_alive
            and self.transport is not None
            and not self.transport.is_closing()
        )


class UpstreamResponse:
    """The head of an upstream answer; the body is read with `read_some` / `read`."""

    __slots__ = ("_conn", "_pool", "headers", "status")

    def __init__(self, pool: UpstreamPool, conn: _Connection) -> None:
        self._pool = pool
        self._conn: _Connection | None = conn
        self.status = conn.status
        self.headers = conn.headers
        """Raw (name, value) pairs, names as the server wrote them."""

    def header(self, name: bytes) -> bytes | None:
        """The first value of header `name` (lower case), or None."""
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    @property
    def content_length(self) -> int | None:
        value = self.header(b"content-length")
        return int(value) if value is not None and value.strip().isdigit() else None

    async def read_some(self) -> bytes:
        conn = self._conn
        assert conn is not None, "response already released"
        while True:
            if conn.buffer:
                return conn.take()
            if conn.complete:
                return b""
            if conn.error is not None:
                raise conn.error
            waiter = conn._waiter = conn.loop.create_future()  # conn.wait(), inlined: once per chunk
            await waiter

    async def relay(self, take: Callable[[bytes], bool]) -> None:
        """Hand the body to `take` as it arrives, from the connection's read callback.

        No task switch per chunk: `take` runs inside the network read, so it must be quick and must
        not raise. It returns False for bytes it did not take; those stay buffered and relaying
        stops. Returns when the body has ended or failed, or relaying stopped; `read_some` reads
        what is left and reports how it ended.
        """
        conn = self._conn
        assert conn is not None, "response already released"
        if conn.buffer:
            if not take(b"".join(conn.buffer)):
                return
            conn.take()  # taken: drop it (and read again, if reading had paused)
        conn.relay = take
        try:
            while conn.relay is not None and not conn.complete and conn.error is None and not conn.closed:
                waiter = conn._waiter = conn.loop.create_future()
                await waiter
        finally:
            conn.relay = None

    async def read(self) -> bytes:
        """The whole body."""
        parts = []
        while chunk := await self.read_some():
            parts.append(chunk)
        return b"".join(parts)

    def release(self) -> None:
        """Back to the pool if the body was read to its end, else close the connection."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool._release(conn)


class UpstreamPool:
    """Connections to one upstream origin (`scheme://host:port`, plus a base path prepended to every target).

    >>> pool = UpstreamPool("http://vllm:8000", timeouts=UpstreamTimeouts(read=300))    # doctest: +SKIP
    >>> response = await pool.send(b"POST", b"/v1/chat/completions", headers, body)  # doctest: +SKIP
    >>> try: ... await response.read_some() ...
    ... finally: response.release()
    """

    def __init__(
        self,
        url: str,
        *,
        timeouts: UpstreamTimeouts | None = None,
        limits: UpstreamLimits | None = None,
        tls: UpstreamTls | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"upstream URL must be http:// or https://host[:port][/base]: {url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.base_path = parts.path.rstrip("/").encode("latin-1")
        netloc = f"[{self.host}]" if ":" in self.host else self.host
        if parts.port is not None and parts.port != (443 if parts.scheme == "https" else 80):
            netloc += f":{parts.port}"
        self.host_header = netloc.encode("idna" if not netloc.isascii() else "ascii")
        self._ssl: ssl.SSLContext | None = (tls or UpstreamTls()).context() if parts.scheme == "https" else None
        timeouts, limits = timeouts or UpstreamTimeouts(), limits or UpstreamLimits()
        self.connect_timeout = timeouts.connect
        self.read_timeout = timeouts.read
        self.pool_timeout = timeouts.pool
        self.max_connections = limits.max_connections
        self.keepalive_timeout = limits.keepalive_expiry
        self.warm_window = limits.warm_window
        self.max_warm = min(limits.max_warm, limits.max_connections)
        self._idle: deque[_Connection] = deque()
        self._open = 0
        self._busy = 0
        self._peak = 0
        self._peak_at = -math.inf
        self._warming: asyncio.Task[None] | None = None
        self._waiting: deque[asyncio.Future[_Connection | None]] = deque()
        """Callers waiting in line; each gets a connection, or None: room to open one (counted)."""
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False
        self.retries: dict[str, int] = {}
        """Requests sent again on a new connection, by reason (`idempotent`, `idempotency_key`,
        `closed_before_send`, `not_written`, `reset`, `idle`)."""

    async def send(
        self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> UpstreamResponse:
        """Send one request; returns when the response head has arrived (see the module docstring)."""
        parts = [method, b" ", self.base_path, target, b" HTTP/1.1\r\nHost: ", self.host_header, b"\r\n"]
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
        if body or method not in _NO_BODY_METHODS:
            parts.append(b"Content-Length: %d\r\n" % len(body))
        parts.append(b"\r\n")
        head = b"".join(parts)
        idempotent = method in _IDEMPOTENT
        fresh = False
        while True:
            conn, reused = await self._acquire(fresh)
            sent = conn.loop.time()
            if reused and not fresh and not idempotent and _peer_closed(conn):
                self._release(conn)  # closed by the server while idle, not yet noticed: nothing sent
                self._note_retry("closed_before_send")
                fresh = True
                continue
            idle = sent - conn.idle_since
            try:
                await self._exchange(conn, head, body, method == b"HEAD")
            except UpstreamBroken:
                self._release(conn)
                if reused and not fresh and not conn.received:
                    reason = self._retry_reason(conn, idempotent, headers, idle, conn.loop.time() - sent)
                    if reason is not None:
                        self._note_retry(reason)
                        fresh = True
                        continue  # a stale keep-alive connection: the server closed it as we sent
                raise
            except BaseException:
                self._release(conn)
                raise
            return UpstreamResponse(self, conn)

    def _retry_reason(
        self, conn: _Connection, idempotent: bool, headers: list[tuple[bytes, bytes]], idle: float, failed_after: float
    ) -> str | None:
        """Why a request that failed on a reused connection before any response byte may be sent
        again, or None where the server may have read it (and started a generation)."""
        if idempotent:
            return "idempotent"
        if conn.unwritten:
            return "not_written"
        if conn.reset:
            return "reset"
        if idle > self.keepalive_timeout / 2 and failed_after < STALE_WITHIN:
            return "idle"
        if any(name.lower() == b"idempotency-key" for name, _ in headers):
            return "idempotency_key"
        return None

    def _note_retry(self, reason: str) -> None:
        self.retries[reason] = self.retries.get(reason, 0) + 1

    async def _exchange(self, conn: _Connection, head: bytes, body: bytes, head_only: bool) -> None:
        transport = conn.transport
        assert transport is not None
        conn.head_only = head_only
        conn.unwritten = True
        if len(body) <= 65536:
            transport.write(head + body if body else head)
        else:
            transport.write(head)
            transport.write(body)
        if not transport.is_closing() and not transport.get_write_buffer_size():
            conn.unwritten = False  # the kernel took it all; else resume_writing says when
        conn.start_watchdog()
        while not conn.head_done:
            if conn.error is not None:
                raise conn.error
            await conn.wait()

    # -- the pool ---------------------------------------------------------------------------------
    async def _acquire(self, fresh: bool = False) -> tuple[_Connection, bool]:
        """A connection and whether it was used before; with `fresh`, a new one.

        First come, first served: while callers wait, a newcomer waits behind them, and a released
        connection (or the room a closed one leaves) goes straight to the oldest waiter."""
        loop = asyncio.get_running_loop()
        if self._closed:
            raise UpstreamUnreachable(ConnectionError("the upstream pool is closed"))
        now = loop.time()
        if not fresh:
            while self._idle:
                conn = self._idle.pop()  # the most recently used: the least likely to have gone stale
                if conn.closed or now - conn.idle_since >= self.keepalive_timeout:
                    self._discard(conn)
                    continue
                return self._reuse(conn, now), True
        elif self._idle and self._open >= self.max_connections:
            self._idle.popleft().close()  # make room: the oldest idle one is the likeliest stale; its place is ours
            return await self._connect_in_place(loop), False
        if self._open < self.max_connections and not self._waiting:
            self._open += 1
            return await self._connect_in_place(loop), False
        waiter: asyncio.Future[_Connection | None] = loop.create_future()
        self._waiting.append(waiter)
        try:
            async with asyncio.timeout_at(now + self.pool_timeout):
                handed = await waiter
        except TimeoutError:
            self._forget(waiter)
            raise UpstreamPoolTimeout(
                f"no upstream connection came free within {self.pool_timeout:g}s: all {self.max_connections} "
                "are busy (upstream.max_connections, upstream.pool_timeout)"
            ) from None
        except BaseException:
            self._forget(waiter)
            raise
        if self._closed:
            raise UpstreamUnreachable(ConnectionError("the upstream pool is closed"))
        if handed is not None:
            now = loop.time()
            if not fresh and not handed.closed and now - handed.idle_since < self.keepalive_timeout:
                return self._reuse(handed, now), True
            handed.close()  # not usable here: its place is ours
        return await self._connect_in_place(loop), False

    def _reuse(self, conn: _Connection, now: float) -> _Connection:
        conn._reset()
        conn.in_use = True
        self._note_busy(now)
        return conn

    async def _connect_in_place(self, loop: asyncio.AbstractEventLoop) -> _Connection:
        """A new connection in a place already counted in `_open`; the place is given up on failure."""
        try:
            conn = await self._connect(loop)
        except BaseException:
            self._open -= 1
            self._wake_one()
            raise
        self._note_busy(loop.time())
        return conn

    def _note_busy(self, now: float) -> None:
        """One more connection handed out: remember the most busy at once, and when."""
        self._busy += 1
        if self._busy >= self._peak or now - self._peak_at > self.warm_window:
            self._peak, self._peak_at = self._busy, now

    def _warm_target(self, now: float) -> int:
        """How many connections to keep open now: the recent peak, while it is recent."""
        return min(self._peak, self.max_warm) if now - self._peak_at < self.warm_window else 0

    def _warm(self, now: float) -> None:
        """Start topping the pool up to its warm target in the background, unless already under way."""
        if self._warming is None and not self._closed and self._open < self._warm_target(now):
            self._warming = asyncio.get_running_loop().create_task(self._open_warm())

    async def _open_warm(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while not self._closed and self._open < self._warm_target(loop.time()):
                self._open += 1
                try:
                    conn = await self._connect(loop)
                except BaseException as exc:
                    self._open -= 1
                    self._wake_one()
                    if isinstance(exc, UpstreamError):
                        log.debug("could not open a warm upstream connection: %s", exc)
                        return
                    raise
                if self._closed:
                    self._discard(conn)
                    return
                conn.finished_at = loop.time()
                self._idle_conn(conn)
        finally:
            self._warming = None

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> _Connection:
        read_timeout = self.read_timeout
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop, read_timeout),
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self._ssl is not None else None,
                )
        except TimeoutError:
            message = f"connecting to {self.host}:{self.port} took over {self.connect_timeout:g}s"
            raise UpstreamTimeout(message) from None
        except OSError as exc:
            raise UpstreamUnreachable(exc) from exc
        conn.on_idle_lost = self._lost_idle
        return conn

    def _lost_idle(self, conn: _Connection) -> None:
        """The server closed a pooled idle connection: out of the pool now, not at its next use, and
        replaced while the pool is to stay warm — unless it never served (a server that closes idle
        connections at once must not make the pool reconnect in a loop)."""
        try:
            self._idle.remove(conn)
        except ValueError:
            return  # the pool itself let it go
        self._open -= 1
        self._wake_one()
        if conn.served:
            self._warm(conn.loop.time())

    def _release(self, conn: _Connection) -> None:
        self._busy -= 1
        conn._stop_watchdog()
        if self._closed or not conn.reusable():
            self._discard(conn)
            return
        self._idle_conn(conn)

    def _idle_conn(self, conn: _Connection) -> None:
        """To the oldest waiter, else into the idle queue, which stays ordered by `idle_since` (the
        oldest first) for the sweeper."""
        conn.in_use = False
        conn.idle_since = conn.finished_at
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self._idle.append(conn)
        if self._sweeper is None:
            self._sweeper = conn.loop.call_at(conn.idle_since + self.keepalive_timeout, self._sweep)

    def _discard(self, conn: _Connection) -> None:
        conn.close()
        self._open -= 1
        self._wake_one()

    def _forget(self, waiter: asyncio.Future[_Connection | None]) -> None:
        """A waiter that gave up (timed out, cancelled): out of the queue; what it was handed as it
        gave up passes on."""
        with contextlib.suppress(ValueError):
            self._waiting.remove(waiter)
        if self._closed or not waiter.done() or waiter.cancelled():
            return
        handed = waiter.result()
        if handed is not None:
            self._idle_conn(handed)
        else:
            self._open -= 1
            self._wake_one()

    def _wake_one(self) -> None:
        """Room for one more connection: to the oldest waiter, who opens it (the place is counted now)."""
        while self._waiting and self._open < self.max_connections:
            waiter = self._waiting.popleft()
            if not waiter.done():
                self._open += 1
                waiter.set_result(None)
                return

    def _sweep(self) -> None:
        """Close connections idle for `keepalive_timeout` (the server would soon close them anyway),
        and replace them while the pool is to stay warm."""
        self._sweeper = None
        if not self._idle:
            return
        loop = self._idle[0].loop
        now = loop.time()
        kept: deque[_Connection] = deque()
        for conn in self._idle:
            if conn.closed or now - conn.idle_since >= self.keepalive_timeout:
                self._discard(conn)
            else:
                kept.append(conn)
        self._idle = kept
        if kept:
            self._sweeper = loop.call_at(kept[0].idle_since + self.keepalive_timeout, self._sweep)
        self._warm(now)

    async def close(self) -> None:
        """Close idle connections; connections in use close when their response is released."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        while self._idle:
            self._discard(self._idle.pop())
        for waiter in self._waiting:
            if not waiter.done():
                waiter.set_result(None)
        warming = self._warming
        if warming is not None:
            warming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await warming

    def stats(self) -> dict[str, Any]:
        return {"open": self._open, "idle": len(self._idle), "waiting": len(self._waiting)}

    @property
    def warming(self) -> asyncio.Task[None] | None:
        """The background task opening warm connections, while one runs."""
        return self._warming

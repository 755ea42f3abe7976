"""The proxy's upstream client on its own, against raw servers that answer byte by byte as scripted."""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sentinel.proxy import upstream as upstream_module
from sentinel.proxy.upstream import (
    UpstreamBroken,
    UpstreamPool,
    UpstreamPoolTimeout,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from sentinel.proxy.upstream_settings import TlsError, UpstreamLimits, UpstreamTimeouts, UpstreamTls
from tests.support.upstream import free_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


class RawServer:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self.requests: list[bytes] = []
        self.port = 0
        self._changed = asyncio.Condition()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        """Until `predicate` holds, checked again each time a connection opens or ends or a request
        arrives (`timeout` is only a safety net)."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(predicate)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        await self._notify()
        try:
            await self.handler(reader, writer, self.connections)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            writer.close()
            await self._notify()

    async def request(self, reader: asyncio.StreamReader) -> bytes:
        """Read one request (head and Content-Length body); b"" when the client closed."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return b""
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        request = head + await reader.readexactly(length)
        self.requests.append(request)
        await self._notify()
        return request


@asynccontextmanager
async def raw_server(handler: Handler, ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[RawServer]:
    server = RawServer(handler)
    listener = await asyncio.start_server(server._serve, "127.0.0.1", 0, ssl=ssl_context)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()


def answering(*responses: bytes, then_close: bool = False) -> Callable[[RawServer], Handler]:
    """A handler answering the requests on each connection with `responses` in turn."""

    def make(server: RawServer) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
            for response in responses:
                if not await server.request(reader):
                    return
                writer.write(response)
                await writer.drain()
            if then_close:
                return
            await reader.read()

        return handle

    return make


@asynccontextmanager
async def serving(make: Callable[[RawServer], Handler]) -> AsyncIterator[RawServer]:
    holder: list[RawServer] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        await make(holder[0])(reader, writer, index)

    async with raw_server(handler) as server:
        holder.append(server)
        yield server


async def until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll state that has no event to wait on; `timeout` is only a safety net."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.001)


async def fetch(pool: UpstreamPool, method: bytes = b"GET", body: bytes = b"", path: bytes = b"/v1/models") -> bytes:
    response = await pool.send(method, path, [(b"x-test", b"1")], body)
    try:
        return await response.read()
    finally:
        response.release()


async def test_request_head_is_what_the_proxy_sent_before() -> None:
    async with serving(answering(OK, OK, OK, OK)) as server:
        pool = UpstreamPool(f"http://127.0.0.1:{server.port}/base/")
        await fetch(pool, b"GET", path=b"/v1/files/a%2Fb?x=%20y")
        await fetch(pool, b"POST", b'{"a":1}')
        await fetch(pool, b"POST")
        await fetch(pool, b"DELETE")
        await pool.close()
    authority = f"127.0.0.1:{server.port}".encode()
    assert server.requests == [
        b"GET /base/v1/files/a%2Fb?x=%20y HTTP/1.1\r\nHost: " + authority + b"\r\nx-test: 1\r\n\r\n",
        b"POST /base/v1/models HTTP/1.1\r\nHost: " + authority + b'\r\nx-test: 1\r\nContent-Length: 7\r\n\r\n{"a":1}',
        b"POST /base/v1/models HTTP/1.1\r\nHost: " + authority + b"\r\nx-test: 1\r\nContent-Length: 0\r\n\r\n",
        b"DELETE /base/v1/models HTTP/1.1\r\nHost: " + authority + b"\r\nx-test: 1\r\nContent-Length: 0\r\n\r\n",
    ]
    assert server.connections == 1  # one keep-alive connection for all four
    assert UpstreamPool("https://vllm").host_header == b"vllm"
    assert UpstreamPool("http://[::1]:80/").host_header == b"[::1]"
    assert UpstreamPool("http://[::1]:8000").host_header == b"[::1]:8000"


async def test_idle_connections_are_closed_after_the_keepalive_timeout() -> None:
    """Two pools on one server, alike but for the keep-alive timeout: the connection of the 0.2 s
    pool is closed while the older one of the 1-hour pool stays open and is reused. (Not kept warm
    here: `warm_window=0`; warming is the next test's.)"""
    async with serving(answering(OK, OK)) as server:
        patient = UpstreamPool(f"http://127.0.0.1:{server.port}", limits=UpstreamLimits(keepalive_expiry=3600))
        assert await fetch(patient) == b"{}"
        pool = UpstreamPool(
            f"http://127.0.0.1:{server.port}", limits=UpstreamLimits(keepalive_expiry=0.2, warm_window=0)
        )
        assert await fetch(pool) == b"{}"
        assert pool.stats() == {"open": 1, "idle": 1, "waiting": 0}
        await server.wait_for(lambda: server.open == 1)  # the server saw one of the two connections end
        assert pool.stats() == {"open": 0, "idle": 0, "waiting": 0}
        assert patient.stats() == {"open": 1, "idle": 1, "waiting": 0}
        assert await fetch(pool) == b"{}"
        assert await fetch(patient) == b"{}"
        assert server.connections == 3 and server.open == 2
        await pool.close()
        await patient.close()


class Held:
    """A handler that answers each request once the current burst's `gate` opens, so that a burst
    keeps all its connections busy at once; `close_idle()` makes the server close every connection
    open at that moment, as a server's idle timeout would (connections accepted later stay)."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self._closing = asyncio.Event()

    def close_idle(self) -> None:
        self._closing.set()
        self._closing = asyncio.Event()

    def __call__(self, server: RawServer) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
            closing = asyncio.ensure_future(self._closing.wait())
            try:
                while True:
                    request = asyncio.ensure_future(server.request(reader))
                    await asyncio.wait({request, closing}, return_when=asyncio.FIRST_COMPLETED)
                    if not request.done() or not request.result():
                        request.cancel()
                        return
                    await self.gate.wait()
                    writer.write(OK)
                    await writer.drain()
            finally:
                closing.cancel()

        return handle


async def burst(pool: UpstreamPool, server: RawServer, held: Held, size: int) -> None:
    """`size` calls at once, each on its own connection: the server answers none until all are in."""
    held.gate = asyncio.Event()
    before = len(server.requests)
    calls = asyncio.gather(*[fetch(pool) for _ in range(size)])
    await server.wait_for(lambda: len(server.requests) == before + size)
    held.gate.set()
    assert await asyncio.wait_for(calls, 30) == [b"{}"] * size


async def warmed(pool: UpstreamPool) -> dict[str, int]:
    """The pool's counts once no warming is under way (a new round may start as one ends)."""
    while pool.warming is not None:
        await asyncio.wait_for(pool.warming, 30)
    return pool.stats()


async def test_after_a_burst_expiring_connections_are_replaced_in_the_background() -> None:
    """Four calls at once open four connections; when they expire (0.2 s idle) the pool opens four
    new ones off any request's path; with `max_warm=2` it keeps two. Driven by the server's events,
    not by waiting out the expiry."""
    held = Held()
    async with serving(held) as server:
        pool = UpstreamPool(
            f"http://127.0.0.1:{server.port}", limits=UpstreamLimits(keepalive_expiry=0.2, warm_window=3600)
        )
        await burst(pool, server, held, 4)
        assert server.connections == 4 and pool.stats() == {"open": 4, "idle": 4, "waiting": 0}
        await server.wait_for(lambda: server.connections >= 8)  # replacements, while the four expire
        assert await warmed(pool) == {"open": 4, "idle": 4, "waiting": 0}
        assert len(server.requests) == 4  # opened, not used: nothing was sent on them
        await pool.close()

    async with serving(held) as server:
        pool = UpstreamPool(
            f"http://127.0.0.1:{server.port}",
            limits=UpstreamLimits(keepalive_expiry=0.2, warm_window=3600, max_warm=2),
        )
        await burst(pool, server, held, 4)
        await server.wait_for(lambda: server.connections >= 6)
        assert await warmed(pool) == {"open": 2, "idle": 2, "waiting": 0}
        await pool.close()


async def test_the_next_burst_finds_its_connections_open() -> None:
    """The server closes the burst's idle connections (its idle timeout); the pool replaces them at
    once, and a second burst of four sends every call on one of those, connecting nothing. The
    replacements, never used, are not replaced in turn when the server closes them too: a server
    that drops idle connections at once does not make the pool reconnect in a loop."""
    held = Held()
    async with serving(held) as server:
        pool = UpstreamPool(
            f"http://127.0.0.1:{server.port}", limits=UpstreamLimits(keepalive_expiry=3600, warm_window=3600)
        )
        await burst(pool, server, held, 4)
        held.close_idle()
        await server.wait_for(lambda: server.connections == 8)
        assert await warmed(pool) == {"open": 4, "idle": 4, "waiting": 0}
        await burst(pool, server, held, 4)
        assert server.connections == 8 and len(server.requests) == 8  # no call waited for a connect
        # once more, but these four served: replaced; then the server closes the unused replacements
        held.close_idle()
        await server.wait_for(lambda: server.connections == 12)
        assert await warmed(pool) == {"open": 4, "idle": 4, "waiting": 0}
        held.close_idle()
        await until(lambda: pool.stats()["open"] == 0)
        assert pool.warming is None and server.connections == 12
        assert await fetch(pool) == b"{}"  # and the pool still serves, on a new connection
        await pool.close()


async def test_warming_an_unreachable_upstream_gives_up_and_loses_no_slot() -> None:
    """The upstream stops listening after a burst: the replacement connects fail once, quietly; the
    pool is left empty and consistent, and a call gets the usual `UpstreamUnreachable`."""
    held = Held()
    async with serving(held) as server:
        pool = UpstreamPool(
            f"http://127.0.0.1:{server.port}", limits=UpstreamLimits(keepalive_expiry=0.2, warm_window=3600)
        )
        await burst(pool, server, held, 3)
    # the listener is closed; the three idle connections stay open until they expire
    await server.wait_for(lambda: server.open == 0)
    assert await warmed(pool) == {"open": 0, "idle": 0, "waiting": 0}
    with pytest.raises(UpstreamUnreachable):
        await fetch(pool)
    assert pool.stats() == {"open": 0, "idle": 0, "waiting": 0}
    await pool.close()


async def test_a_stale_keepalive_connection_is_retried_on_a_new_one() -> None:
    """The server answers one request per connection, then drops the next without a word."""
    async with serving(answering(OK, b"", then_close=True)) as server:
        pool = UpstreamPool(f"http://127.0.0.1:{server.port}")
        assert await fetch(pool, b"GET") == b"{}"
        assert await fetch(pool, b"GET") == b"{}"  # first try on the old connection failed silently
        assert server.connections == 2
        assert pool.retries == {"idempotent": 1}
        await pool.close()


async def test_a_post_the_server_read_and_dropped_is_not_sent_twice_a_get_is() -> None:
    """The server reads the second request on a connection and closes it unanswered: it may have
    started a generation, so a POST is not resent, a GET is."""
    async with serving(answering(OK, b"", then_close=True)) as server:
        pool = UpstreamPool(f"http://127.0.0.1:{server.port}")
        assert await fetch(pool, b"GET") == b"{}"
        with pytest.raises(UpstreamBroken):
            await fetch(pool, b"POST", b"{}")
        assert server.connections == 1 and len(server.requests) == 2
        assert await fetch(pool, b"GET") == b"{}"
        await pool.close()


async def test_a_post_on_a_connection_idle_for_long_that_fails_at_once_is_sent_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Idle for over half the keep-alive expiry, a connection that fails within `STALE_WITHIN` is
    taken for one the server timed out as the request crossed it (the idle time is set back on the
    pooled connection rather than waited for; the server drops it at once, so the failure is quick)."""

    def idle_for(seconds: float) -> None:
        (conn,) = pool._idle
        conn.idle_since -= seconds

    async with serving(answering(OK, b"", then_close=True)) as server:
        pool = UpstreamPool(f"http://127.0.0.1:{server.port}", limits=UpstreamLimits(keepalive_expiry=3600))
        assert await fetch(pool, b"GET") == b"{}"
        idle_for(1801)
        assert await fetch(pool, b"POST", b"{}") == b"{}"
        assert await fetch(pool, b"GET") == b"{}"
        idle_for(1000)  # under half the expiry: not stale enough
        with pytest.raises(UpstreamBroken):
            await fetch(pool, b"POST", b"{}")
        assert await fetch(pool, b"GET") == b"{}"
        idle_for(1801)
        monkeypatch.setattr(upstream_module, "STALE_WITHIN", 0.0)  # a failure that came late: not resent
        with pytest.raises(UpstreamBroken):
            await fetch(pool, b"POST", b"{}")
        await pool.close()
    assert pool.retries == {"idle": 1, "idempotent": 1}  # the first GET after the retried POST met a closed one


def read_then_end(ends: asyncio.Event | None = None) -> Callable[[RawServer], Handler]:
    """Answers the first request on each connection; reads the second in full (a generation could
    start) and ends the connection without a word: an orderly FIN, nothing left unread. With `ends`,
    only once the test sets it."""

    def make(server: RawServer) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
            if not await server.request(reader):
                return
            writer.write(OK)
            await writer.drain()
            if not await server.request(reader):
                return
            if ends is not None:
                await ends.wait()
            writer.transport.abort()

        return handle

    return make


async def test_a_post_the_server_read_is_not_sent_again_when_the_connection_then_ends() -> None:
    """The server read the POST on a kept-alive connection, then died before answering: it may have
    started a generation, so the POST is not sent a second time however soon the failure came."""
    ends = asyncio.Event()
    async with serving(read_then_end(ends)) as server:
        pool = UpstreamPool(f"http://127.0.0.1:{server.port}")
        assert await fetch(pool, b"POST", b'{"warm": 1}') == b"{}"
        call = asyncio.ensure_future(fetch(pool, b"POST", b'{"prompt": "generate once"}'))
        await server.wait_for(lambda: len(server.requests) == 2)
        ends.set()
        with pytest.raises(UpstreamBroken):
            await call
        await pool.close()
    assert [r.endswith(b'{"prompt": "generate once"}') for r in server.requests] == [False, True]
    assert server.connections == 1
    assert pool.retries == {}


async def test_a_post_with_an_idempotency_key_is_sent_again() -> None:
    async with serving(read_then_end()) as server:
        pool = UpstreamPool(f"http://127.0.0.1:{server.port}")
        assert await fetch(pool, b"POST", b"{}") == b"{}"
        response = await pool.send(b"POST", b"/v1/chat/completions", [(b"Idempotency-Key", b"k-1")], b"{}")
        try:
            assert response.status == 200 and await response.read() == b"{}"
        finally:
            response.release()
        await pool.close()
    assert server.connections == 2
    assert pool.retries == {"idempotency_key": 1}


async def test_a_post_on_a_connection_the_server_already_closed_goes_on_a_new_one() -> None:
    """The server closed the idle connection; the pool sees its FIN before sending and sends the
    POST on a new connection: the closed one never carried it."""
    async with serving(answering(OK, then_close=True)) as server:
        pool = UpstreamPool(f"http://127.0.0.1:{server.port}", limits=UpstreamLimits(keepalive_expiry=3600))
        assert await fetch(pool, b"POST", b"{}") == b"{}"
        await server.wait_for(lambda: server.open == 0)  # its end is on the wire, maybe not yet handled
        assert await fetch(pool, b"POST", b"{}") == b"{}"
        await pool.close()
    assert server.connections == 2 and len(server.requests) == 2
    assert sum(pool.retries.values()) <= 1


async def test_an_upstream_with_a_shorter_idle_timeout_never_costs_a_call() -> None:
    """200 calls, each after the server's idle timeout (1 s, shorter than the pool's 4 s) has fired on
    the connection the pool kept: the server closes it as the next request arrives, unread, as a
    server does whose timer fires while the request is in flight. Driven by events, not by waiting
    out the second: the server's idle timer "fires" when the next request is on the wire."""

    async def idle_timeout(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        if not await server.request(reader):
            return
        writer.write(OK)
        await writer.drain()
        await reader.read(1)  # idle past 1 s: the next request's first byte meets a closing connection
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # unread data: RST
        writer.transport.abort()

    async with raw_server(idle_timeout) as server:
        pool = UpstreamPool(f"http://127.0.0.1:{server.port}", limits=UpstreamLimits(keepalive_expiry=4))
        for n in range(200):
            assert await fetch(pool, b"POST", b'{"n": %d}' % n) == b"{}"
        await pool.close()
    assert len(server.requests) == 200  # each answered once: none was lost, none sent twice
    assert server.connections == 200  # and every reuse met a stale connection


async def test_waiting_for_a_pooled_connection_is_bounded() -> None:
    held = asyncio.Event()

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while await server.request(reader):
            await held.wait()
            writer.write(OK)

    async with raw_server(hold) as server:
        pool = UpstreamPool(
            f"http://127.0.0.1:{server.port}",
            timeouts=UpstreamTimeouts(pool=0.05),
            limits=UpstreamLimits(max_connections=1),
        )
        busy = asyncio.ensure_future(fetch(pool))
        await server.wait_for(lambda: len(server.requests) == 1)
        with pytest.raises(UpstreamPoolTimeout, match=r"within 0.05s: all 1 are busy \(upstream.max_connections"):
            await fetch(pool)
        assert isinstance(UpstreamPoolTimeout("x"), UpstreamTimeout)  # so the proxy answers 504
        assert pool.stats() == {"open": 1, "idle": 0, "waiting": 0}
        held.set()
        assert await asyncio.wait_for(busy, 30) == b"{}"
        assert await fetch(pool) == b"{}"  # the pool still works
        await pool.close()


async def test_a_waiting_caller_is_served_before_callers_that_come_after_it() -> None:
    """Two callers loop on a pool of two connections; a third is handed the next connection one of
    them releases, instead of losing it to their next request until its pool timeout."""
    async with serving(answering(*[OK] * 10_000)) as server:
        pool = UpstreamPool(
            f"http://127.0.0.1:{server.port}",
            timeouts=UpstreamTimeouts(pool=5),  # a safety net: served in turn, it waits one request
            limits=UpstreamLimits(max_connections=2),
        )
        served = 0

        async def loop_calls() -> None:
            nonlocal served
            while True:
                await fetch(pool)
                served += 1

        loops = [asyncio.ensure_future(loop_calls()) for _ in range(2)]
        try:
            await until(lambda: served >= 10)
            before = served
            assert await fetch(pool) == b"{}"
            assert served - before <= 2  # at most the two requests under way when it came
            assert pool.stats()["open"] == 2
        finally:
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            await pool.close()


async def test_a_caller_that_gives_up_leaves_the_line() -> None:
    held = asyncio.Event()

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while await server.request(reader):
            await held.wait()
            writer.write(OK)

    async with raw_server(hold) as server:
        pool = UpstreamPool(f"http://127.0.0.1:{server.port}", limits=UpstreamLimits(max_connections=1))
        busy = asyncio.ensure_future(fetch(pool))
        await server.wait_for(lambda: len(server.requests) == 1)
        quitter = asyncio.ensure_future(fetch(pool))
        patient = asyncio.ensure_future(fetch(pool))
        await until(lambda: pool.stats()["waiting"] == 2)
        quitter.cancel()
        held.set()
        assert await asyncio.wait_for(busy, 30) == b"{}"
        assert await asyncio.wait_for(patient, 30) == b"{}"
        assert pool.stats() == {"open": 1, "idle": 1, "waiting": 0}
        await pool.close()


async def test_body_until_close_interim_answers_and_head() -> None:
    http10 = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello, until the end"
    early_hints = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n" + OK
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
    async with serving(answering(http10, then_close=True)) as server:
        pool = UpstreamPool(f"http://127.0.0.1:{server.port}")
        assert await fetch(pool) == b"hello, until the end"
        assert pool.stats()["open"] == 0
    async with serving(answering(early_hints, early_hints)) as server:
        pool = UpstreamPool(f"http://127.0.0.1:{server.port}")
        response = await pool.send(b"GET", b"/", [], b"")
        assert response.status == 200 and response.header(b"link") is None
        assert response.header(b"content-type") == b"application/json" and response.content_length == 2
        assert await response.read() == b"{}"
        response.release()
        assert await fetch(pool) == b"{}" and server.connections == 1
        await pool.close()
    async with serving(answering(head, head, OK)) as server:
        pool = UpstreamPool(f"http://127.0.0.1:{server.port}")  # a body wait would outlast the wait_for
        for _ in range(2):
            response = await asyncio.wait_for(pool.send(b"HEAD", b"/", [], b""), 30)
            assert response.content_length == 10 and await asyncio.wait_for(response.read(), 30) == b""
            response.release()
        assert await asyncio.wait_for(fetch(pool), 30) == b"{}"
        assert server.connections == 1  # HEAD answers end with their head: the connection is reused
        await pool.close()


async def test_connections_beyond_the_limit_wait_their_turn() -> None:
    """The server holds its answers until the test has seen two requests in and four waiting."""
    answer = asyncio.Event()

    async def held(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while await server.request(reader):
            await answer.wait()
            writer.write(OK)

    async with raw_server(held) as server:
        pool = UpstreamPool(f"http://127.0.0.1:{server.port}", limits=UpstreamLimits(max_connections=2))
        fetches = asyncio.gather(*[fetch(pool) for _ in range(6)])
        await server.wait_for(lambda: len(server.requests) == 2)
        assert pool.stats() == {"open": 2, "idle": 0, "waiting": 4}
        assert server.connections == 2
        answer.set()
        results = await asyncio.wait_for(fetches, 30)
        assert results == [b"{}"] * 6
        assert server.most_open == 2 and server.connections == 2 and len(server.requests) == 6
        assert pool.stats() == {"open": 2, "idle": 2, "waiting": 0}
        await pool.close()


async def test_a_large_body_reaches_a_slow_reader_intact() -> None:
    """More than the read buffer's high-water mark: reading from the upstream pauses and resumes."""
    body = bytes(range(256)) * (4 * 4096)

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await server.request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for start in range(0, len(body), 65536):
            piece = body[start : start + 65536]
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with raw_server(big) as server:
        pool = UpstreamPool(f"http://127.0.0.1:{server.port}")
        response = await pool.send(b"GET", b"/", [], b"")
        conn = response._conn
        assert conn is not None
        # The reader is slow: it reads nothing until the connection has stopped reading from the server.
        await until(lambda: conn._read_paused)
        assert not conn.complete
        received = []
        while chunk := await response.read_some():
            received.append(chunk)
        response.release()
        assert b"".join(received) == body
        assert pool.stats()["idle"] == 1
        await pool.close()


async def test_a_relay_hands_over_chunks_until_it_refuses_one_and_read_some_gets_the_rest_in_order() -> None:
    """`relay` calls its callback from the network read; the chunk it refuses, and all after it,
    stay for `read_some`: nothing is lost, repeated or reordered, and the connection is reused."""
    sent_first = asyncio.Event()
    taken_first = asyncio.Event()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await server.request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\naaa\r\n")
        await writer.drain()
        sent_first.set()
        await taken_first.wait()  # the next chunks come in a later network read
        writer.write(b"3\r\nbbb\r\n3\r\nccc\r\n0\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with raw_server(answer) as server:
        pool = UpstreamPool(f"http://127.0.0.1:{server.port}")
        response = await pool.send(b"GET", b"/", [], b"")
        taken: list[bytes] = []

        def take(chunk: bytes) -> bool:
            if taken:
                return False  # a client that cannot take more
            taken.append(chunk)
            taken_first.set()
            return True

        await sent_first.wait()
        await asyncio.wait_for(response.relay(take), 30)
        assert taken == [b"aaa"]
        assert await response.read() == b"bbbccc"
        response.release()
        assert pool.stats()["idle"] == 1
        await pool.close()


async def test_a_relay_takes_a_whole_body_and_returns_at_its_end() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await server.request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(50):
            writer.write(b"2\r\n%02d\r\n" % i)
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await reader.read()

    async with raw_server(answer) as server:
        pool = UpstreamPool(f"http://127.0.0.1:{server.port}")
        response = await pool.send(b"GET", b"/", [], b"")
        taken: list[bytes] = []
        await asyncio.wait_for(response.relay(lambda chunk: taken.append(chunk) is None), 30)
        assert b"".join(taken) == b"".join(b"%02d" % i for i in range(50))
        assert await response.read_some() == b""
        response.release()
        assert pool.stats()["idle"] == 1
        await pool.close()


async def test_failures_are_told_apart() -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await server.request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await reader.read()  # silent until the client hangs up

    async with raw_server(stall) as server:
        pool = UpstreamPool(f"http://127.0.0.1:{server.port}", timeouts=UpstreamTimeouts(read=0.2))
        response = await asyncio.wait_for(pool.send(b"GET", b"/", [], b""), 30)
        assert await asyncio.wait_for(response.read_some(), 30) == b"abc"
        with pytest.raises(UpstreamTimeout, match="sent nothing for 0.2s"):
            await asyncio.wait_for(response.read_some(), 30)
        response.release()
        await pool.close()
        await server.wait_for(lambda: server.open == 0)  # the timeout closed the connection

    async with serving(answering(b"not http at all\r\n\r\n")) as server:
        pool = UpstreamPool(f"http://127.0.0.1:{server.port}")
        with pytest.raises(UpstreamBroken, match="invalid HTTP response"):
            await pool.send(b"GET", b"/", [], b"")
        await pool.close()

    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await server.request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()

    async with raw_server(cut) as server:
        pool = UpstreamPool(f"http://127.0.0.1:{server.port}")
        response = await pool.send(b"GET", b"/", [], b"")
        with pytest.raises(UpstreamBroken, match="before the response was complete"):
            await response.read()
        response.release()
        await pool.close()

    pool = UpstreamPool(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(UpstreamUnreachable) as refused:
        await pool.send(b"GET", b"/", [], b"")
    assert isinstance(refused.value.os_error, ConnectionRefusedError)
    await pool.close()
    with pytest.raises(UpstreamUnreachable, match="closed"):
        await pool.send(b"GET", b"/", [], b"")


def _certificate(
    name: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, issuer_key: ec.EllipticCurvePrivateKey, ca: bool
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    else:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None = None) -> bytes:
    out = cert.public_bytes(serialization.Encoding.PEM)
    if key is not None:
        out += key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    return out


def certificate_authority(tmp_path: Path, *, client: bool = False) -> tuple[Path, ssl.SSLContext]:
    """A private CA file and a server context with a certificate for `localhost` that it signed; with
    `client`, the server requires a client certificate from the same CA, written to client.pem and
    client.key."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Sentinel test CA")])
    ca = _certificate("Sentinel test CA", ca_key, ca_name, ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(_pem(ca))
    (tmp_path / "server.pem").write_bytes(_pem(_certificate("localhost", key, ca_name, ca_key, ca=False), key))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "server.pem")
    if client:
        client_key = ec.generate_private_key(ec.SECP256R1())
        (tmp_path / "client.pem").write_bytes(_pem(_certificate("sentinel", client_key, ca_name, ca_key, ca=False)))
        (tmp_path / "client.key").write_bytes(
            client_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(ca_file)
    return ca_file, context


async def test_https_upstream_is_verified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca_file, server_context = certificate_authority(tmp_path)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while await server.request(reader):
            writer.write(OK)

    async with raw_server(handler, server_context) as server:
        untrusted = UpstreamPool(f"https://localhost:{server.port}")
        with pytest.raises(UpstreamUnreachable) as caught:
            await untrusted.send(b"GET", b"/", [], b"")
        assert isinstance(caught.value.os_error, ssl.SSLCertVerificationError)
        await untrusted.close()
        monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))  # as an operator would point at a private CA
        pool = UpstreamPool(f"https://localhost:{server.port}")
        assert await fetch(pool) == b"{}" and await fetch(pool) == b"{}"
        assert server.requests[-1].startswith(b"GET /v1/models HTTP/1.1\r\nHost: localhost:")
        await pool.close()


async def test_a_body_until_close_cut_by_a_reset_is_an_error_not_a_complete_answer() -> None:
    """The server starts an HTTP/1.0-style body (no length, no chunking), then resets the connection:
    only an orderly close ends such a body; a reset must not pass a truncated answer off as whole."""

    cut = asyncio.Event()

    async def reset_midway(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\npartial")
        await writer.drain()
        await cut.wait()  # until the client has the head and the partial body
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
        writer.transport.abort()

    async with raw_server(reset_midway) as server:
        pool = UpstreamPool(f"http://127.0.0.1:{server.port}")  # silence would outlast the wait_for
        response = await asyncio.wait_for(pool.send(b"GET", b"/", [], b""), 30)
        received = b""
        while len(received) < len(b"partial"):
            received += await asyncio.wait_for(response.read_some(), 30)
        assert received == b"partial"
        cut.set()
        with pytest.raises(UpstreamBroken):
            await asyncio.wait_for(response.read(), 30)
        response.release()
        await pool.close()


async def test_mutual_tls_with_a_private_ca(tmp_path: Path) -> None:
    """A hospital's set-up: the model server's certificate from an internal CA, and a client
    certificate from the same CA required of every caller."""
    ca_file, server_context = certificate_authority(tmp_path, client=True)
    peers: list[object] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        peers.append(writer.get_extra_info("peercert"))
        while await server.request(reader):
            writer.write(OK)

    async with raw_server(handler, server_context) as server:
        url = f"https://localhost:{server.port}"
        no_client_cert = UpstreamPool(url, tls=UpstreamTls(ca_bundle=ca_file))
        with pytest.raises((UpstreamBroken, UpstreamUnreachable)):  # the server refuses the handshake
            await fetch(no_client_cert)
        await no_client_cert.close()
        tls = UpstreamTls(ca_bundle=ca_file, client_cert=tmp_path / "client.pem", client_key=tmp_path / "client.key")
        pool = UpstreamPool(url, tls=tls)
        assert await fetch(pool) == b"{}" and await fetch(pool) == b"{}"
        await pool.close()
    subjects = [dict(pair[0] for pair in p["subject"]) for p in peers if isinstance(p, dict)]
    assert subjects == [{"commonName": "sentinel"}]  # the server saw Sentinel's certificate, once


async def test_verification_off_accepts_any_certificate_and_bad_files_are_named(tmp_path: Path) -> None:
    _, server_context = certificate_authority(tmp_path)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while await server.request(reader):
            writer.write(OK)

    async with raw_server(handler, server_context) as server:
        pool = UpstreamPool(f"https://localhost:{server.port}", tls=UpstreamTls(verify=False))
        assert await fetch(pool) == b"{}"
        await pool.close()
    with pytest.raises(TlsError, match="missing.pem"):
        UpstreamTls(ca_bundle=tmp_path / "missing.pem").context()
    with pytest.raises(TlsError, match="server.pem"):
        UpstreamTls(client_cert=tmp_path / "server.pem", client_key=tmp_path / "ca.pem").context()
    with pytest.raises(TlsError, match="without a client certificate"):
        UpstreamTls(client_key=tmp_path / "client.key").context()

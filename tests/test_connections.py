"""Connection limits on both ports, against the real server on real sockets: slowloris clients are
answered 408 and closed after the header timeout while normal traffic is served; the cap refuses
connections past it; a stalled body is cut after the body timeout."""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
import requests
import uvicorn
import uvloop
from uvicorn.server import ServerState

from sentinel.connections import BODY, ConnectionLimits, GuardedProtocol, client_group, expired, guarded_protocol
from tests.conftest import Running, wait_until
from tests.support.upstream import Script, ScriptedUpstream

HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: sentinel\r\nContent-Type: application/json\r\n"
SAFETY = 30.0  # a safety net only: every wait below ends on an event far sooner


def _open(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=SAFETY)
    return sock


def _read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _limited(start_sentinel: Callable[..., Running], upstream: ScriptedUpstream, **connections: float) -> Running:
    upstream.script("/v1/models", Script(chunks=[b'{"data": []}']))
    return start_sentinel(upstream.url, connections={"header_timeout": 0.5, "body_timeout": 0.5, **connections})


def test_slowloris_connections_are_closed_after_the_header_timeout_while_others_are_served(
    start_sentinel: Callable[..., Running], upstream: ScriptedUpstream
) -> None:
    proxy = _limited(start_sentinel, upstream)
    slow = [_open(proxy.url) for _ in range(40)]
    for sock in slow:
        sock.sendall(HEAD)
    stop = threading.Event()

    def drip() -> None:  # the attack: one more header line now and then, never the end of the head
        while not stop.wait(0.05):
            for sock in slow:
                with contextlib.suppress(OSError):  # closed by Sentinel: the point of the test
                    sock.sendall(b"X-Slow: 1\r\n")

    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    started = time.monotonic()
    try:
        # Normal callers are served while the 40 slow ones hold their connections.
        with requests.Session() as session:
            for _ in range(20):
                assert session.get(proxy.url + "/v1/models", timeout=SAFETY).status_code == 200
        answers = [_read_until_closed(sock) for sock in slow]
    finally:
        stop.set()
        dripper.join()
        for sock in slow:
            sock.close()
    assert time.monotonic() - started >= 0.5
    assert all(answer.startswith(b"HTTP/1.1 408 ") for answer in answers), answers[:2]
    assert proxy.metric("sentinel_connections_closed_total", port="proxy", reason="header_timeout") == 40
    assert not any(seen.path == "/v1/chat/completions" for seen in upstream.seen)


def test_a_silent_connection_is_closed_after_the_header_timeout_without_an_answer(
    start_sentinel: Callable[..., Running], upstream: ScriptedUpstream
) -> None:
    """A connection that never sent a byte (a port probe, a preconnect) asked nothing: it is closed
    silently, as HAProxy's http-ignore-probes does, and counted."""
    proxy = _limited(start_sentinel, upstream)
    with _open(proxy.url) as silent:
        assert _read_until_closed(silent) == b""
    assert proxy.metric("sentinel_connections_closed_total", port="proxy", reason="header_timeout") == 1


def test_the_next_request_on_a_kept_alive_connection_gets_its_own_header_deadline(
    start_sentinel: Callable[..., Running], upstream: ScriptedUpstream
) -> None:
    proxy = _limited(start_sentinel, upstream, idle_timeout=60)
    with _open(proxy.url) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: sentinel\r\n\r\n")
        first = b""
        while not first.endswith(b"0\r\n\r\n"):  # the end of the chunked answer
            first += sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 ")
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: sentinel\r\n")  # and never the blank line
        assert _read_until_closed(sock).startswith(b"HTTP/1.1 408 ")
    assert proxy.metric("sentinel_connections_closed_total", port="proxy", reason="header_timeout") == 1


def test_a_stalled_request_body_is_cut_after_the_body_timeout(
    start_sentinel: Callable[..., Running], upstream: ScriptedUpstream
) -> None:
    proxy = _limited(start_sentinel, upstream)
    with _open(proxy.url) as sock:
        sock.sendall(HEAD + b"Content-Length: 100\r\n\r\n" + b'{"model": ')
        answer = _read_until_closed(sock)
    assert answer == b"" or answer.startswith((b"HTTP/1.1 408 ", b"HTTP/1.1 4")), answer
    wait_until(lambda: proxy.metric("sentinel_connections_closed_total", port="proxy", reason="body_timeout") == 1)
    assert all(len(seen.body) < 100 for seen in upstream.seen)


def test_a_body_sent_steadily_is_not_cut(start_sentinel: Callable[..., Running], upstream: ScriptedUpstream) -> None:
    upstream.script("/v1/echo", Script(chunks=[b"{}"]))
    proxy = _limited(start_sentinel, upstream, header_timeout=5, body_timeout=5)
    body = b"x" * 4000
    with _open(proxy.url) as sock:
        sock.sendall(b"POST /v1/echo HTTP/1.1\r\nHost: s\r\nConnection: close\r\nContent-Length: 4000\r\n\r\n")
        for offset in range(0, len(body), 1000):
            sock.sendall(body[offset : offset + 1000])
        assert _read_until_closed(sock).startswith(b"HTTP/1.1 200 ")
    assert upstream.seen[-1].body == body


@pytest.mark.parametrize("port", ["proxy", "admin"])
def test_connections_past_the_cap_get_503_and_the_port_serves_again_once_they_go(
    start_sentinel: Callable[..., Running], upstream: ScriptedUpstream, port: str
) -> None:
    proxy = _limited(start_sentinel, upstream, header_timeout=60, max_proxy=3, max_admin=3)
    url = proxy.url if port == "proxy" else proxy.admin_url
    held = [_open(url) for _ in range(3)]
    try:
        wait_until(lambda: proxy.metric("sentinel_connections_open", port=port) == 3)
        with _open(url) as extra:
            assert _read_until_closed(extra).startswith(b"HTTP/1.1 503 ")
        assert proxy.metric("sentinel_connections_closed_total", port=port, reason="over_limit") == 1
    finally:
        for sock in held:
            sock.close()
    wait_until(lambda: proxy.metric("sentinel_connections_open", port=port) == 0)
    path = "/v1/models" if port == "proxy" else "/healthz"
    assert requests.get(url + path, timeout=SAFETY).status_code == 200


def test_the_admin_port_closes_slow_clients_too(
    start_sentinel: Callable[..., Running], upstream: ScriptedUpstream
) -> None:
    proxy = _limited(start_sentinel, upstream)
    with _open(proxy.admin_url) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\n")
        assert _read_until_closed(sock).startswith(b"HTTP/1.1 408 ")
    assert requests.get(proxy.admin_url + "/healthz", timeout=SAFETY).status_code == 200
    assert proxy.metric("sentinel_connections_closed_total", port="admin", reason="header_timeout") == 1


def test_an_idle_kept_alive_connection_is_closed_after_the_idle_timeout(
    start_sentinel: Callable[..., Running], upstream: ScriptedUpstream
) -> None:
    proxy = _limited(start_sentinel, upstream, header_timeout=60, idle_timeout=0.5)
    with _open(proxy.url) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: sentinel\r\n\r\n")
        answer = _read_until_closed(sock)  # the answer, then the end of the connection: nothing else
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"0\r\n\r\n")
    assert proxy.metric("sentinel_connections_closed_total", port="proxy", reason="header_timeout") is None


def test_a_connection_whose_reading_sentinel_paused_is_not_expired() -> None:
    """Unit level: uvicorn pauses reading when a body waits for the app (over its 64 KiB buffer); the
    silence that follows is Sentinel's, not the client's, so its deadline starts again instead."""
    limits = ConnectionLimits("proxy", header_timeout=10, body_timeout=30, max_connections=10)
    protocol = guarded_protocol(limits)
    waiting, slow = object.__new__(protocol), object.__new__(protocol)
    for connection, paused in ((waiting, True), (slow, False)):
        connection.reading, connection.deadline = BODY, 100.0
        connection.flow = SimpleNamespace(read_paused=paused)  # type: ignore[assignment]
    assert expired([waiting, slow, object()], now=100.0) == [slow]
    assert waiting.deadline == 130.0


def test_a_slow_next_head_never_writes_408_into_a_streaming_answer(
    start_sentinel: Callable[..., Running], upstream: ScriptedUpstream
) -> None:
    """The client starts its next request while the previous answer still streams, then stalls: the
    connection is closed after the header timeout, but no 408 lands inside the stream."""
    stream = upstream.script(
        "/v1/stream",
        Script(headers={"Content-Type": "text/event-stream"}, chunks=[b"data: 1\n\n", b"data: 2\n\n"], pause_at=1),
    )
    proxy = _limited(start_sentinel, upstream)
    try:
        with _open(proxy.url) as sock:
            sock.sendall(b"GET /v1/stream HTTP/1.1\r\nHost: s\r\n\r\n")
            received = b""
            while b"data: 1" not in received:
                received += sock.recv(65536)
            sock.sendall(b"GET /v1/models HTTP/1.1\r\n")  # and never the rest
            received += _read_until_closed(sock)
    finally:
        stream.gate.open()
    assert b"408" not in received and b"data: 2" not in received
    assert proxy.metric("sentinel_connections_closed_total", port="proxy", reason="header_timeout") == 1


def _answered(sock: socket.socket, request: bytes) -> bytes:
    sock.sendall(request)
    answer = b""
    while not answer.endswith(b"0\r\n\r\n"):  # the end of the chunked answer
        chunk = sock.recv(65536)
        assert chunk, answer
        answer += chunk
    return answer


def test_a_lone_crlf_after_an_answer_does_not_keep_the_connection_open(
    start_sentinel: Callable[..., Running], upstream: ScriptedUpstream
) -> None:
    """The parser skips CR/LF between requests without starting one, and uvicorn's keep-alive timer
    is cancelled by any byte: the idle deadline must survive them."""
    proxy = _limited(start_sentinel, upstream, header_timeout=60, idle_timeout=0.5)
    with _open(proxy.url) as sock:
        assert _answered(sock, b"GET /v1/models HTTP/1.1\r\nHost: sentinel\r\n\r\n").startswith(b"HTTP/1.1 200 ")
        sock.sendall(b"\r\n")
        assert _read_until_closed(sock) == b""  # closed, no answer written
    assert proxy.metric("sentinel_connections_closed_total", port="proxy", reason="idle_timeout") == 1


def test_crlf_dripped_on_a_kept_alive_connection_does_not_keep_it_open(
    start_sentinel: Callable[..., Running], upstream: ScriptedUpstream
) -> None:
    proxy = _limited(start_sentinel, upstream, header_timeout=60, idle_timeout=0.5)
    closed = threading.Event()
    with _open(proxy.url) as sock:
        _answered(sock, b"GET /v1/models HTTP/1.1\r\nHost: sentinel\r\n\r\n")

        def drip() -> None:
            while not closed.wait(0.1):
                try:
                    sock.sendall(b"\r\n")
                except OSError:
                    return

        dripper = threading.Thread(target=drip, daemon=True)
        dripper.start()
        try:
            assert _read_until_closed(sock) == b""
        finally:
            closed.set()
            dripper.join()
    assert proxy.metric("sentinel_connections_closed_total", port="proxy", reason="idle_timeout") == 1


def test_a_client_that_never_reads_its_answer_is_closed_and_the_upstream_released(
    start_sentinel: Callable[..., Running], upstream: ScriptedUpstream
) -> None:
    """The answer is larger than every buffer between the upstream and the client, which never
    reads: after connections.write_timeout the connection is dropped and the upstream call ends."""
    upstream.script("/v1/big", Script(headers={"Content-Type": "text/event-stream"}, chunks=[b"x" * 262144] * 400))
    proxy = _limited(start_sentinel, upstream, header_timeout=60, write_timeout=0.5)
    host, port = proxy.url.removeprefix("http://").rsplit(":", 1)
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(SAFETY)
        sock.connect((host, int(port)))
        sock.sendall(b"GET /v1/big HTTP/1.1\r\nHost: sentinel\r\n\r\n")
        wait_until(lambda: proxy.metric("sentinel_connections_closed_total", port="proxy", reason="write_timeout") == 1)
        wait_until(lambda: bool(upstream.seen) and upstream.seen[-1].cancelled)
    assert not upstream.seen[-1].completed
    wait_until(lambda: proxy.metric("sentinel_connections_open", port="proxy") == 0)


def test_a_body_dripped_below_the_minimum_rate_is_cut(
    start_sentinel: Callable[..., Running], upstream: ScriptedUpstream
) -> None:
    """One byte every 0.2 s never leaves body_timeout (1 s) of silence, but averages 5 bytes/s, far
    below connections.body_min_rate: the body's deadline is not pushed by each byte."""
    proxy = _limited(start_sentinel, upstream, header_timeout=60, body_timeout=1, body_min_rate=100)
    stop = threading.Event()
    with _open(proxy.url) as sock:
        sock.sendall(HEAD + b"Content-Length: 100000\r\n\r\n")

        def drip() -> None:
            while not stop.wait(0.2):
                try:
                    sock.sendall(b"a")
                except OSError:
                    return

        dripper = threading.Thread(target=drip, daemon=True)
        dripper.start()
        try:
            answer = _read_until_closed(sock)
        finally:
            stop.set()
            dripper.join()
    assert answer == b"" or answer.startswith(b"HTTP/1.1 4"), answer
    assert proxy.metric("sentinel_connections_closed_total", port="proxy", reason="body_timeout") == 1


def test_the_body_deadline_grows_with_the_bytes_received_up_to_the_silence_limit() -> None:
    """Unit level, with the loop's clock injected: each chunk earns len / body_min_rate seconds, never
    more than body_timeout from now."""
    limits = ConnectionLimits("proxy", header_timeout=10, body_timeout=30, max_connections=10, body_min_rate=100)
    connection = object.__new__(guarded_protocol(limits))
    clock = SimpleNamespace(now=0.0)
    connection.loop = SimpleNamespace(time=lambda: clock.now)  # type: ignore[assignment]
    connection.cycle = SimpleNamespace(response_complete=False, body=b"", message_event=threading.Event())  # type: ignore[assignment]
    connection.flow = SimpleNamespace(pause_reading=lambda: None)  # type: ignore[assignment]
    connection.parser = SimpleNamespace(should_upgrade=lambda: False)  # type: ignore[assignment]
    connection.reading, connection.deadline = BODY, 30.0
    clock.now = 5.0
    connection.on_body(b"x" * 100)  # one second earned
    assert connection.deadline == 31.0
    clock.now = 6.0
    connection.on_body(b"x" * 100_000)  # a thousand earned, but at most 30 s of silence
    assert connection.deadline == 36.0
    connection.cycle.response_complete = True  # type: ignore[attr-defined]
    clock.now = 20.0
    connection.on_body(b"x" * 100_000)  # after the answer: nothing earned
    assert connection.deadline == 36.0


def test_connections_past_the_per_client_cap_get_503(
    start_sentinel: Callable[..., Running], upstream: ScriptedUpstream
) -> None:
    proxy = _limited(start_sentinel, upstream, header_timeout=60, max_per_client=2)
    held = [_open(proxy.url) for _ in range(2)]
    try:
        wait_until(lambda: proxy.metric("sentinel_connections_open", port="proxy") == 2)
        with _open(proxy.url) as extra:
            assert _read_until_closed(extra).startswith(b"HTTP/1.1 503 ")
        assert proxy.metric("sentinel_connections_closed_total", port="proxy", reason="over_client_limit") == 1
        # the admin port counts its own connections
        assert requests.get(proxy.admin_url + "/healthz", timeout=SAFETY).status_code == 200
    finally:
        for sock in held:
            sock.close()
    wait_until(lambda: proxy.metric("sentinel_connections_open", port="proxy") == 0)
    with requests.Session() as session:  # the count went down with the connections
        assert session.get(proxy.url + "/v1/models", timeout=SAFETY).status_code == 200


def test_ipv6_clients_are_counted_by_their_64() -> None:
    assert client_group("2001:db8:1:2:aaaa::1") == client_group("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert client_group("2001:db8:1:3::1") != client_group("2001:db8:1:2::1")
    assert client_group("192.0.2.7") == "192.0.2.7"


@contextlib.contextmanager
def _burst(kind: str, *, take_queued: bool, clients: int, cap: int = 1000, request: bool = True) -> Any:
    """A port whose listen queue holds `clients` connections (each with its request sent, if
    `request`) before its event loop runs, as when a burst arrives while the loop is busy. Runs the
    loop until every connection was made (served or refused); yields the number of turns that took,
    the client sockets, the open server connections and the loop."""
    loop = LOOPS[kind]()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    limits = ConnectionLimits("proxy", header_timeout=SAFETY, body_timeout=SAFETY, max_connections=cap)
    made: list[GuardedProtocol] = []

    class Counted(guarded_protocol(limits, listener if take_queued else None)):  # type: ignore[misc]
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            made.append(self)
            super().connection_made(transport)

    config = uvicorn.Config(app, lifespan="off", log_config=None)
    config.load()
    state = ServerState()
    server = loop.run_until_complete(
        loop.create_server(
            lambda: Counted(config=config, server_state=state, app_state={}, _loop=loop), sock=listener, backlog=128
        )
    )
    socks = [socket.create_connection(listener.getsockname(), timeout=SAFETY) for _ in range(clients)]
    try:
        if request:
            for client in socks:
                client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")

        async def turns_until_made() -> int:
            turns = 0
            while len(made) < clients:
                turns += 1  # each sleep(0) lets the loop run one turn: I/O, then the callbacks due
                assert turns < 100 * clients, "the connections were never made"
                await asyncio.sleep(0)
            return turns

        yield loop.run_until_complete(turns_until_made()), socks, state.connections, loop
    finally:
        for client in socks:
            client.close()
        server.close()
        loop.run_until_complete(server.wait_closed())
        loop.close()
        listener.close()


LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.mark.parametrize("kind", sorted(LOOPS))
def test_a_burst_of_new_connections_is_taken_from_the_listen_queue_in_a_few_turns(kind: str) -> None:
    """libuv (uvloop) accepts one connection per turn of the event loop: on a proxy whose every turn
    is long with the work of its open streams, a burst of 64 new clients waited 64 turns to be
    accepted (docs/benchmarks.md). The port takes the rest of its queue when it accepts one."""
    with _burst(kind, take_queued=True, clients=64) as (turns, socks, _, loop):
        assert turns <= 8, turns
        answers = [loop.run_until_complete(loop.run_in_executor(None, _read_until_closed, c)) for c in socks]
        assert all(a.startswith(b"HTTP/1.1 200 ") and a.endswith(b"ok") for a in answers), answers
    if kind == "uvloop":  # what it replaces: one connection per turn
        with _burst(kind, take_queued=False, clients=64) as (turns, socks, _, loop):
            assert turns >= 64, turns


def test_connections_taken_from_the_queue_keep_the_port_s_cap() -> None:
    """Taking queued connections admits none past `max_connections`: each one past it is answered
    503 and closed (the 503 is written before the connection counts as made). The port takes only
    as many as the cap has room for: the rest wait their turn in the queue, as without the burst."""
    with _burst("uvloop", take_queued=True, clients=40, cap=10, request=False) as (turns, socks, open_now, _loop):
        assert turns >= 30, turns
        refused, _, _ = select.select(socks, [], [], 0)
        assert (len(open_now), len(refused)) == (10, 30)
        assert all(_read_until_closed(sock).startswith(b"HTTP/1.1 503 ") for sock in refused)


def test_connections_taken_from_the_queue_as_the_port_shuts_down_are_closed_not_served() -> None:
    """uvicorn's graceful shutdown closes the listening socket and tells each open connection to
    finish; a connection taken from the queue just before (its protocol not made yet) missed that
    word. Served, it would keep the shutdown waiting (a kept-alive client: until the graceful
    timeout). It is closed unanswered, as the listen queue's connections are when the socket closes."""
    loop = uvloop.new_event_loop()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    limits = ConnectionLimits("proxy", header_timeout=SAFETY, body_timeout=SAFETY, max_connections=1000)
    made: list[GuardedProtocol] = []
    shutdown: list[asyncio.Task[None]] = []
    all_made = asyncio.Event()

    class ShutDownAfterTheFirst(guarded_protocol(limits, listener)):  # type: ignore[misc]
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            made.append(self)
            super().connection_made(transport)  # the first one takes the queue's connections
            if len(made) == len(socks):
                all_made.set()
            if not shutdown:  # SIGTERM now: before the connections taken are made
                shutdown.append(loop.create_task(server.shutdown(sockets=[listener])))

    config = uvicorn.Config(app, http=ShutDownAfterTheFirst, lifespan="off", log_config=None)
    config.timeout_graceful_shutdown = SAFETY
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    loop.run_until_complete(server.startup(sockets=[listener]))
    socks = [socket.create_connection(listener.getsockname(), timeout=SAFETY) for _ in range(8)]
    try:
        for client in socks:
            client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")

        loop.run_until_complete(asyncio.wait_for(all_made.wait(), SAFETY))
        queued = [c for c in made if c.queued]
        assert len(queued) == 7 and all(c.transport.is_closing() for c in queued)
        loop.run_until_complete(asyncio.wait_for(shutdown[0], SAFETY))
        assert [_unanswered(c) for c in socks[1:]] == [True] * 7  # the first was open as the shutdown began
    finally:
        for client in socks:
            client.close()
        for connection in made:
            connection.transport.abort()
        for task in shutdown:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*shutdown, return_exceptions=True))
        loop.close()
        listener.close()


def _unanswered(sock: socket.socket) -> bool:
    """Closed without an answer: an orderly end, or a reset (closed with its request unread)."""
    try:
        return _read_until_closed(sock) == b""
    except ConnectionResetError:
        return True

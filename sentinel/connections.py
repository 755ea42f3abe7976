"""Limits on client connections for both ports: deadlines for reading requests and writing answers, caps.

uvicorn limits only the keep-alive idle time, and cancels even that on any byte (a lone CRLF, which
the parser skips, keeps a connection forever); a client that sends its headers one byte at a time
(slowloris), drips its body, or never reads its answer holds a connection for as long as it likes.
`guarded_protocol` gives uvicorn a protocol that stamps each connection with the moment its current
read (or a stalled write) must be done by; one sweeper task per port closes the connections past it.
The request path pays an attribute store and a clock read per request, never a timer.

New connections are taken from the listen queue in bursts: libuv (under uvloop) accepts one per
event-loop turn, so on a busy loop a burst of N new clients waited N turns to be accepted
(`GuardedProtocol._accept_queued`). `chunk_writer` lets the proxy write a streamed answer's chunks
to the client without a task switch each. What either knows of uvicorn's protocol is here.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from prometheus_client import CollectorRegistry, Counter
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

log = logging.getLogger("sentinel.connections")

ACCEPT_BURST = 64
"""Connections taken from the listen queue at most, each time the event loop accepts one."""

HEADERS, BODY, IDLE, FRESH = 1, 2, 3, 4
"""What a connection is reading: a request's head, or its body; waiting for the next request on a
kept-alive connection (IDLE), or for the first byte of a new one (FRESH); 0 while it responds."""

_TOO_MANY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\nretry-after: 1\r\n"
    b"connection: close\r\ncontent-length: 37\r\n\r\ntoo many open connections; try again\n"
)
_TOO_SLOW = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"connection: close\r\ncontent-length: 36\r\n\r\nthe request was not sent in time\r\n\r\n"
)


@dataclass
class ConnectionLimits:
    """The limits one port enforces, and what it counted.

    >>> limits = ConnectionLimits("proxy", header_timeout=10, body_timeout=30, max_connections=1000)
    """

    port: str
    header_timeout: float
    """Seconds from a connection's start, or a request's first byte, to the end of the request's headers."""
    body_timeout: float
    """Longest silence while a request body is being read."""
    max_connections: int
    """Connections past this get a 503 and are closed at once."""
    idle_timeout: float = 75.0
    """A kept-alive connection waiting this long for its next request is closed (silently)."""
    write_timeout: float = 60.0
    """Longest time an answer may wait for the client to read it (the send buffer full); then closed."""
    body_min_rate: float = 500.0
    """Bytes per second a request body must average: its deadline starts `body_timeout` after the
    head and each chunk adds `len / body_min_rate` seconds, never past `body_timeout` of silence
    (Apache mod_reqtimeout's MinRate). 0: only the silence limit."""
    max_per_client: int = 0
    """Open connections one client address may hold (an IPv6 client by its /64); 0: no cap."""
    closed: Counter | None = None
    """`sentinel_connections_closed_total{port, reason}` (see `closed_counter`)."""

    def note(self, reason: str) -> None:
        if self.closed is not None:
            self.closed.labels(self.port, reason).inc()

    @property
    def tick(self) -> float:
        """How often the sweeper looks: a quarter of the shortest deadline, between 50 ms and 1 s."""
        shortest = min(self.header_timeout, self.body_timeout, self.idle_timeout, self.write_timeout)
        return min(1.0, max(0.05, shortest / 4))


def closed_counter(registry: CollectorRegistry) -> Counter:
    return Counter(
        "sentinel_connections_closed",
        "Client connections Sentinel closed itself, by port (proxy, admin) and reason "
        "(header_timeout, body_timeout, idle_timeout, write_timeout, over_limit, over_client_limit).",
        ["port", "reason"],
        registry=registry,
    )


def client_group(host: str) -> str:
    """The address a client is counted under: itself for IPv4, its /64 for IPv6 (one host usually
    holds a whole /64, so counting single IPv6 addresses would count nothing)."""
    if ":" not in host:
        return host
    try:
        return str(ipaddress.IPv6Network((host.split("%", 1)[0], 64), strict=False))
    except ValueError:
        return host


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with read and write deadlines per connection and connection caps."""

    limits: ClassVar[ConnectionLimits]
    clients: ClassVar[dict[str, int]]
    listener: ClassVar[socket.socket | None] = None
    """The port's listening socket, from which `_accept_queued` takes waiting connections."""
    attaching: ClassVar[set[asyncio.Task[None]]] = set()
    """Connections `_accept_queued` took that are not made yet (they count toward the cap)."""
    queued: bool = False
    """Taken from the listen queue by `_accept_queued`, not accepted by the event loop."""
    reading: int = 0
    deadline: float = math.inf
    write_deadline: float = math.inf
    group: str | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.queued and self.listener is not None and self.listener.fileno() < 0:
            # Taken from the queue just before the port stopped listening (uvicorn's shutdown closes
            # the socket, then tells the connections open then to finish): this one missed that
            # word. Closed unanswered, as the queue's connections are when the socket closes.
            transport.close()
            return
        limits = self.limits
        if len(self.connections) > limits.max_connections:
            self._refuse(transport, "over_limit")
            return
        if limits.max_per_client and self.client is not None:
            group = client_group(self.client[0])
            held = self.clients.get(group, 0)
            if held >= limits.max_per_client:
                self._refuse(transport, "over_client_limit")
                return
            self.clients[group], self.group = held + 1, group
        self.reading = FRESH
        self.deadline = self.loop.time() + limits.header_timeout
        if not self.queued and self.listener is not None:
            self._accept_queued(self.listener)

    def _accept_queued(self, listener: socket.socket) -> None:
        """Take the connections waiting in the listen queue now, up to `ACCEPT_BURST`.

        libuv, since 1.45 (uvloop 0.18), accepts one connection per turn of the event loop and
        leaves the rest to the next turns. A turn on a busy proxy lasts as long as the work on its
        open connections (64 streams: about half a millisecond), so a burst of 64 new clients was
        accepted over 64 turns, and its last requests reached the handler 25-35 ms after they were
        sent (docs/benchmarks.md, issue #18). asyncio's own loop takes up to its backlog per turn;
        so does this, capped, and never past the port's connection cap: only a connection the port
        admitted takes more, and only as many as the cap has room for; beyond that the loop's
        one-per-turn pace (each refused with a 503 unless room was made meanwhile) is kept. A TLS
        port (Sentinel's are plain) keeps the loop's pace too.
        """
        if listener.fileno() < 0 or self.config.is_ssl:  # stopped listening (shutdown), or TLS
            return
        room = self.limits.max_connections - len(self.connections) - len(self.attaching)
        loop = self.loop
        for _ in range(min(ACCEPT_BURST, room)):
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of file descriptors, say: the loop's own accept copes with it
                log.warning("could not take a waiting %s connection: %s", self.limits.port, exc)
                return
            protocol = type(self)(
                config=self.config, server_state=self.server_state, app_state=self.app_state, _loop=loop
            )
            protocol.queued = True
            task = loop.create_task(_attach(loop, protocol, sock))
            self.attaching.add(task)
            task.add_done_callback(self.attaching.discard)

    def _refuse(self, transport: asyncio.Transport, reason: str) -> None:
        self.connections.discard(self)
        self.limits.note(reason)
        transport.write(_TOO_MANY)
        transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        group, self.group = self.group, None
        if group is not None:
            held = self.clients.get(group, 1) - 1
            if held > 0:
                self.clients[group] = held
            else:
                self.clients.pop(group, None)
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.reading == FRESH:  # the head's deadline runs from the connection's start
            self.reading = HEADERS
        elif self.reading != HEADERS:  # a kept-alive connection's next request: its head has its own deadline
            self.reading = HEADERS
            self.deadline = self.loop.time() + self.limits.header_timeout

    def on_headers_complete(self) -> None:
        self.reading = BODY
        self.deadline = self.loop.time() + self.limits.body_timeout
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if cycle is None or not cycle.response_complete:  # bytes nobody waits for earn no time
            limits = self.limits
            silence = self.loop.time() + limits.body_timeout
            if limits.body_min_rate > 0:
                earned = self.deadline + len(body) / limits.body_min_rate
                self.deadline = earned if earned < silence else silence
            else:
                self.deadline = silence
        super().on_body(body)

    def on_message_complete(self) -> None:
        self.reading = 0
        self.deadline = math.inf
        super().on_message_complete()

    def on_response_complete(self) -> None:
        queued = bool(self.pipeline)
        super().on_response_complete()
        if queued or self.reading != 0 or self.transport.is_closing():
            return
        # Waiting for the next request. uvicorn's keep-alive timer is cancelled by any byte, even a
        # CRLF the parser skips without starting a request: the deadline is ours, and only a
        # request's first byte (on_message_begin) ends it.
        self._unset_keepalive_if_required()
        self.reading = IDLE
        self.deadline = self.loop.time() + self.limits.idle_timeout

    def pause_writing(self) -> None:
        super().pause_writing()
        self.write_deadline = self.loop.time() + self.limits.write_timeout

    def resume_writing(self) -> None:
        super().resume_writing()
        self.write_deadline = math.inf

    def expire(self) -> None:
        """Past a deadline: close; answer 408 first only to a request head or body not read in time
        while nothing else is being answered."""
        if self.transport is None or self.transport.is_closing():
            self.reading, self.deadline, self.write_deadline = 0, math.inf, math.inf
            return
        if self.write_deadline <= self.loop.time():
            # The client does not read: the buffered answer can never be flushed, so drop it. The
            # app sees the disconnect and releases its upstream connection.
            self.limits.note("write_timeout")
            self.reading, self.deadline, self.write_deadline = 0, math.inf, math.inf
            self.transport.abort()
            return
        reading = self.reading
        self.reading, self.deadline = 0, math.inf
        if reading in (IDLE, FRESH):
            # Nothing asked (a kept-alive connection gone quiet, a probe that never sent a byte):
            # closed without an answer, as HAProxy's http-ignore-probes does.
            self.limits.note("idle_timeout" if reading == IDLE else "header_timeout")
            self.transport.close()
            return
        reason = "header_timeout" if reading == HEADERS else "body_timeout"
        self.limits.note(reason)
        # The 408 only where no answer is being written: a kept-alive connection can start its next
        # request while the previous answer still streams, and 408 bytes inside it would corrupt it.
        cycle = self.cycle  # while a head is read, still the previous request's
        if reason == "header_timeout":
            answer = cycle is None or cycle.response_complete
        else:
            answer = cycle is not None and not cycle.response_started
        if answer:
            self.transport.write(_TOO_SLOW)
        self.transport.close()


async def _attach(loop: asyncio.AbstractEventLoop, protocol: GuardedProtocol, sock: socket.socket) -> None:
    """Serve a connection `_accept_queued` took, as the loop serves those it accepts itself."""
    try:
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as uvloop's accept does
        await loop.connect_accepted_socket(lambda: protocol, sock)
    except (OSError, RuntimeError) as exc:  # the client left already, or the loop is closing
        log.debug("a waiting %s connection could not be served: %s", protocol.limits.port, exc)
        sock.close()


def guarded_protocol(limits: ConnectionLimits, listener: socket.socket | None = None) -> type[GuardedProtocol]:
    """A protocol class for `uvicorn.Config(http=...)` bound to one port's limits and, where given,
    its listening socket (from which bursts of new connections are taken at once)."""
    if listener is not None:
        listener.setblocking(False)  # `_accept_queued` must find the queue empty, never wait on it
    attributes: dict[str, Any] = {"limits": limits, "clients": {}, "listener": listener, "attaching": set()}
    return type(f"GuardedProtocol[{limits.port}]", (GuardedProtocol,), attributes)


def expired(connections: Iterable[Any], now: float) -> list[GuardedProtocol]:
    """The connections past a deadline. One whose reading Sentinel itself paused (a pipelined
    request waiting its turn, a body the app has not taken yet) is not the client's delay: its read
    deadline starts again from now."""
    late = []
    for c in connections:
        if not isinstance(c, GuardedProtocol):
            continue
        if c.write_deadline <= now:
            late.append(c)
            continue
        if c.deadline > now:
            continue
        if c.flow is not None and c.flow.read_paused and c.reading in (HEADERS, BODY):
            c.deadline = now + (c.limits.header_timeout if c.reading == HEADERS else c.limits.body_timeout)
            continue
        late.append(c)
    return late


async def sweep(connections: set[Any], limits: ConnectionLimits) -> None:
    """Close the connections past their read deadline, every `limits.tick` seconds, until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(limits.tick)
        late: Sequence[GuardedProtocol] = expired(connections, loop.time())
        for connection in late:
            try:
                connection.expire()
            except Exception as exc:  # one broken connection must not stop the sweeper
                log.warning("could not close a slow %s connection: %s", limits.port, exc)


def chunk_writer(send: Any) -> Callable[[bytes], bool] | None:
    """A direct writer of body chunks for a started chunked response on uvicorn's httptools protocol.

    It returns False, writing nothing, once the client has left or reads too slowly (the send
    buffer is over its high-water mark): from there on the app sends through ASGI, which waits.
    None where `send` is not uvicorn's (another server, a middleware): the app sends through ASGI.
    """
    cycle = getattr(send, "__self__", None)
    if type(cycle) is not RequestResponseCycle or not cycle.response_started or cycle.response_complete:
        return None
    if not cycle.chunked_encoding or cycle.scope["method"] == "HEAD":
        return None
    transport, flow = cycle.transport, cycle.flow

    def write(chunk: bytes) -> bool:
        if cycle.disconnected or flow.write_paused or transport.is_closing():
            return False
        if chunk:
            transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        return True

    return write

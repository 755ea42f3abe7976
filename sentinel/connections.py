"""Limits on client connections for both ports: read deadlines for request heads and bodies, and a cap.

uvicorn limits only the keep-alive idle time; a client that connects and sends its headers one byte
at a time (slowloris) holds a connection for as long as it likes. `guarded_protocol` gives uvicorn a
protocol that stamps each connection with the moment its current read must be done by; one sweeper
task per port closes the connections past it. The request path pays an attribute store and a clock
read per request, never a timer.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from prometheus_client import CollectorRegistry, Counter
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("sentinel.connections")

HEADERS, BODY = 1, 2
"""What a connection is reading: a request's head, or its body; 0 while it waits or responds."""

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
    closed: Counter | None = None
    """`sentinel_connections_closed_total{port, reason}` (see `closed_counter`)."""

    def note(self, reason: str) -> None:
        if self.closed is not None:
            self.closed.labels(self.port, reason).inc()

    @property
    def tick(self) -> float:
        """How often the sweeper looks: a quarter of the shorter deadline, between 50 ms and 1 s."""
        return min(1.0, max(0.05, min(self.header_timeout, self.body_timeout) / 4))


def closed_counter(registry: CollectorRegistry) -> Counter:
    return Counter(
        "sentinel_connections_closed",
        "Client connections Sentinel closed itself, by port (proxy, admin) and reason "
        "(header_timeout, body_timeout, over_limit).",
        ["port", "reason"],
        registry=registry,
    )


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a read deadline per connection and a connection cap."""

    limits: ClassVar[ConnectionLimits]
    reading: int = 0
    deadline: float = math.inf

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self.connections.discard(self)
            self.limits.note("over_limit")
            transport.write(_TOO_MANY)
            transport.close()
            return
        self.reading = HEADERS
        self.deadline = self.loop.time() + self.limits.header_timeout

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.reading != HEADERS:  # a kept-alive connection's next request: its head has its own deadline
            self.reading = HEADERS
            self.deadline = self.loop.time() + self.limits.header_timeout

    def on_headers_complete(self) -> None:
        self.reading = BODY
        self.deadline = self.loop.time() + self.limits.body_timeout
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self.deadline = self.loop.time() + self.limits.body_timeout
        super().on_body(body)

    def on_message_complete(self) -> None:
        self.reading = 0
        self.deadline = math.inf
        super().on_message_complete()

    def expire(self) -> None:
        """Past the deadline: answer 408 if nothing was answered yet, and close."""
        reason = "header_timeout" if self.reading == HEADERS else "body_timeout"
        self.limits.note(reason)
        self.reading, self.deadline = 0, math.inf
        if self.transport is None or self.transport.is_closing():
            return
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


def guarded_protocol(limits: ConnectionLimits) -> type[GuardedProtocol]:
    """A protocol class for `uvicorn.Config(http=...)` bound to one port's limits."""
    return type(f"GuardedProtocol[{limits.port}]", (GuardedProtocol,), {"limits": limits})


def expired(connections: Iterable[Any], now: float) -> list[GuardedProtocol]:
    """The connections past their deadline. One whose reading Sentinel itself paused (a pipelined
    request waiting its turn, a body the app has not taken yet) is not the client's delay: its
    deadline starts again from now."""
    late = []
    for c in connections:
        if not isinstance(c, GuardedProtocol) or c.deadline > now:
            continue
        if c.flow is not None and c.flow.read_paused:
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

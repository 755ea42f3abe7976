"""`ScriptedUpstream`: a model server on a real socket whose every answer the test scripts byte by byte.

It records each request exactly as it arrived (method, path, query, headers, body) and whether
the client went away before the answer was complete, so tests can assert what crossed the proxy
in both directions. Frame helpers come from the demo upstream, which is shaped like vLLM/Ollama.
"""

from __future__ import annotations

import asyncio
import atexit
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web


class Gate:
    """A barrier a scripted answer waits at until the test opens it, from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._opened = False
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def open(self) -> None:
        with self._lock:
            self._opened = True
            waiters, self._waiters = self._waiters, []
        for loop, waiter in waiters:
            loop.call_soon_threadsafe(_resolve, waiter)

    async def wait(self) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._opened:
                return
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append((loop, waiter))
        await waiter


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


@dataclass
class Script:
    """One scripted answer. `chunks` are written one by one, `delay` seconds apart.

    `delay` only spreads a stream over several network writes; no assertion may depend on how long
    it takes. To make the proxy wait, use `hang_before_head` or `stall_after`: they wait forever
    (until the proxy or the client goes away), never "a little longer than a timeout"; to order a
    step after something the test saw, use `pause_at` and open the `gate`.
    """

    status: int = 200
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})
    chunks: list[bytes] = field(default_factory=list)
    delay: float = 0.0
    first_delay: float = 0.0
    """Wait this long before sending the headers."""
    drop_before_head: bool = False
    """Read the request in full, then end the connection without an answer (a server that died)."""
    hang_before_head: bool = False
    """Never send the headers: hold the request until the proxy gives up on it (read timeouts)."""
    pause_at: int | None = None
    """Before writing chunk number `pause_at`, wait until the test opens `gate`."""
    gate: Gate = field(default_factory=Gate)
    break_after: int | None = None
    """Cut the connection after this many chunks, without finishing the response."""
    stall_after: int | None = None
    """Stop sending (but keep the connection, forever) after this many chunks."""
    content_length: bool = False
    """Send Content-Length instead of chunked transfer encoding."""
    before: Callable[[Seen], None] | None = None
    """Called with the request before answering: tests look at Sentinel's state at that moment."""

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)


@dataclass
class Seen:
    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes
    completed: bool = False
    cancelled: bool = False
    sent_at: list[float] = field(default_factory=list)
    """`time.perf_counter()` just before each chunk was written (the proxy's clock too)."""

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


class ScriptedUpstream:
    def __init__(self) -> None:
        self.scripts: dict[str, Script] = {}
        self.seen: list[Seen] = []
        self.url = ""
        self.cancelled = asyncio.Event()
        self.changed = threading.Condition()
        """Notified when a request is seen and when one is cancelled (see `wait_for`)."""

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 60.0) -> None:
        """Block until `predicate()` holds, woken by each request seen or cancelled; from any thread
        but the servers' loop. `timeout` is only a safety net."""
        with self.changed:
            if not self.changed.wait_for(predicate, timeout):
                raise AssertionError("the upstream never reached the expected state")

    def _changed(self) -> None:
        with self.changed:
            self.changed.notify_all()

    def script(self, path: str, script: Script) -> Script:
        self.scripts[path] = script
        return script

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw_path, _, raw_query = request.raw_path.partition("?")
        seen = Seen(
            request.method,
            raw_path,
            raw_query,
            [(name.decode("latin-1"), value.decode("latin-1")) for name, value in request.raw_headers],
            await request.read(),
        )
        if not request.headers.get("User-Agent", "").startswith("sentinel-probe/"):
            self.seen.append(seen)
            self._changed()
        script = self.scripts.get(raw_path) or self.scripts.get(request.path)
        if script is None:
            return web.json_response({"error": {"message": f"no script for {request.path}"}}, status=404)
        if script.before is not None:
            script.before(seen)
        try:
            if script.first_delay:
                await asyncio.sleep(script.first_delay)
            if script.hang_before_head:
                await _forever()
            if script.drop_before_head:
                assert request.transport is not None
                request.transport.abort()  # everything was read: an orderly FIN, no RST
                return web.Response()
            response = web.StreamResponse(status=script.status, headers=script.headers)
            if script.content_length:
                response.content_length = len(script.body)
            await response.prepare(request)
            for index, chunk in enumerate(script.chunks):
                if script.pause_at is not None and index == script.pause_at:
                    await script.gate.wait()
                if script.break_after is not None and index == script.break_after:
                    assert request.transport is not None
                    request.transport.abort()
                    return response
                if script.stall_after is not None and index == script.stall_after:
                    await _forever()
                seen.sent_at.append(time.perf_counter())
                await response.write(chunk)
                if script.delay:
                    await asyncio.sleep(script.delay)
            await response.write_eof()
            seen.completed = True
            return response
        except (asyncio.CancelledError, ConnectionResetError):
            seen.cancelled = True
            self.cancelled.set()
            self._changed()
            raise


async def _forever() -> None:
    """Wait until cancelled (the proxy closed the connection, or the upstream shuts down)."""
    await asyncio.get_running_loop().create_future()


@asynccontextmanager
async def running_upstream() -> AsyncIterator[ScriptedUpstream]:
    upstream = ScriptedUpstream()
    app = web.Application(client_max_size=256 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", upstream.handle)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    upstream.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        yield upstream
    finally:
        await runner.cleanup()


_HELD: list[socket.socket] = []
atexit.register(lambda: [sock.close() for sock in _HELD])


def refused_port() -> int:
    """A port that refuses connections for the rest of the session: bound but never listening, so no
    server started later (one binding port 0, say) can be handed it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    _HELD.append(sock)
    return int(sock.getsockname()[1])


def free_port() -> int:
    """A port nothing listens on (bound, then released), for a server a test starts on it; for
    'upstream refused' tests use `refused_port`, which no other server can take meanwhile."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])

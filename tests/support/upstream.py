"""`ScriptedUpstream`: a model server on a real socket whose every answer the test scripts byte by byte.

It records each request exactly as it arrived (method, path, query, headers, body) and whether
the client went away before the answer was complete, so tests can assert what crossed the proxy
in both directions. Frame helpers come from the demo upstream, which is shaped like vLLM/Ollama.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class Script:
    """One scripted answer. `chunks` are written one by one, `delay` seconds apart."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})
    chunks: list[bytes] = field(default_factory=list)
    delay: float = 0.0
    first_delay: float = 0.0
    """Wait this long before sending the headers (to provoke read timeouts)."""
    break_after: int | None = None
    """Cut the connection after this many chunks, without finishing the response."""
    stall_after: int | None = None
    """Stop sending (but keep the connection) after this many chunks."""
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
        script = self.scripts.get(raw_path) or self.scripts.get(request.path)
        if script is None:
            return web.json_response({"error": {"message": f"no script for {request.path}"}}, status=404)
        if script.before is not None:
            script.before(seen)
        try:
            if script.first_delay:
                await asyncio.sleep(script.first_delay)
            response = web.StreamResponse(status=script.status, headers=script.headers)
            if script.content_length:
                response.content_length = len(script.body)
            await response.prepare(request)
            for index, chunk in enumerate(script.chunks):
                if script.break_after is not None and index == script.break_after:
                    assert request.transport is not None
                    request.transport.abort()
                    return response
                if script.stall_after is not None and index == script.stall_after:
                    await asyncio.sleep(3600)
                await response.write(chunk)
                if script.delay:
                    await asyncio.sleep(script.delay)
            await response.write_eof()
            seen.completed = True
            return response
        except (asyncio.CancelledError, ConnectionResetError):
            seen.cancelled = True
            self.cancelled.set()
            raise


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


def free_port() -> int:
    """A port nothing listens on (bound, then released), for 'upstream refused' tests."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])

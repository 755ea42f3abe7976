"""`StaticSite`: a real HTTP server on a real socket answering fixed bodies per path, changeable mid-test.

For sources Sentinel polls (model server `/metrics`, Ollama `/api/ps`, a DCGM exporter) or posts to
(an OTLP endpoint): tests set what each path answers, whatever the method, and count the requests.
"""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
JSON = "application/json; charset=utf-8"


@dataclass
class Page:
    body: bytes
    content_type: str = PROMETHEUS_TEXT
    status: int = 200


class StaticSite:
    def __init__(self) -> None:
        self.pages: dict[str, Page] = {}
        self.hits: Counter[str] = Counter()
        self.url = ""

    def page(self, path: str, body: str | bytes, content_type: str = PROMETHEUS_TEXT, status: int = 200) -> None:
        self.pages[path] = Page(body.encode() if isinstance(body, str) else body, content_type, status)

    async def handle(self, request: web.Request) -> web.Response:
        self.hits[request.path] += 1
        page = self.pages.get(request.path)
        if page is None:
            return web.Response(status=404, text="404 page not found\n")
        return web.Response(status=page.status, body=page.body, headers={"Content-Type": page.content_type})


@asynccontextmanager
async def running_site() -> AsyncIterator[StaticSite]:
    site = StaticSite()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", site.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    site.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        yield site
    finally:
        await runner.cleanup()

"""GPU sources read over HTTP, polled in the background so a scrape never waits on the network.

Each source keeps its `latest` `Reading`; the collector only reads that. `ModelServer` is what
`sources: [auto]` uses for the upstream: it finds out which server it is (vLLM, SGLang, llama.cpp
or Ollama) and from then on reads it as that one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import aiohttp

from sentinel.gpu.model_server import READERS, detect
from sentinel.gpu.ollama import PS_PATH, read_ollama_ps
from sentinel.gpu.readings import Reading, SourceAbsent, failed
from sentinel.telemetry.upstream import PROBE_USER_AGENT

log = logging.getLogger("sentinel.gpu")

MAX_BODY_BYTES = 8 * 1024 * 1024
HEADERS = {"User-Agent": PROBE_USER_AGENT, "Accept": "text/plain, application/json"}

Parse = Callable[[bytes, float], Reading]
Clock = Callable[[], float]
"""Stamps each `Reading` (`Reading.at`): `time.monotonic` unless a test drives the time."""


class Unreadable(Exception):
    """The endpoint could not be read: refused, timed out, non-2xx, too large."""


async def fetch(session: aiohttp.ClientSession, url: str) -> bytes:
    try:
        async with session.get(url, headers=HEADERS, allow_redirects=False) as resp:
            if resp.status // 100 != 2:
                raise Unreadable(f"HTTP {resp.status} from {url}")
            body = bytearray()
            async for chunk in resp.content.iter_chunked(65536):
                body += chunk
                if len(body) > MAX_BODY_BYTES:
                    raise Unreadable(f"{url} answered more than {MAX_BODY_BYTES} bytes")
            return bytes(body)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise Unreadable(f"cannot read {url}: {exc!r}") from None


def exposition(read: Callable[[str, float], Reading]) -> Parse:
    """Adapts a reader of Prometheus text to raw bytes."""
    return lambda body, at: read(body.decode("utf-8", "replace"), at)


class HttpSource:
    """One endpoint, one kind of answer. `name` is the `source` label."""

    def __init__(self, name: str, url: str, parse: Parse, *, clock: Clock = time.monotonic) -> None:
        self.name = name
        self.url = url
        self.parse = parse
        self.clock = clock
        self.latest: Reading | None = None

    async def poll(self, session: aiohttp.ClientSession) -> None:
        at = self.clock()
        try:
            reading = self.parse(await fetch(session, self.url), at)
        except (Unreadable, SourceAbsent) as exc:
            reading = failed(self.name, at, str(exc))
        self.record(reading)

    def record(self, reading: Reading) -> None:
        log_change(self.latest, reading)
        self.latest = reading


def log_change(before: Reading | None, reading: Reading) -> None:
    """Log when a source goes absent or comes back, not on every poll."""
    if not reading.ok and (before is None or before.ok):
        log.warning("GPU source %s is absent: %s", reading.source, reading.problem)
    elif reading.ok and before is not None and not before.ok:
        log.info("GPU source %s is readable again", reading.source)


def model_server_source(flavour: str, url: str, *, clock: Clock = time.monotonic) -> HttpSource:
    """A model server read as `flavour`: `url` is Ollama's base URL, or the others' metrics URL."""
    if flavour == "ollama":
        return HttpSource("ollama", url.rstrip("/") + PS_PATH, read_ollama_ps, clock=clock)
    return HttpSource(flavour, url, exposition(READERS[flavour]), clock=clock)


class ModelServer:
    """The upstream's own GPU view, whichever server it is. Reported as `source="model_server"` until known."""

    name = "model_server"

    def __init__(self, metrics_url: str, ollama_url: str, *, clock: Clock = time.monotonic) -> None:
        self.metrics_url = metrics_url
        self.ollama_url = ollama_url
        self.clock = clock
        self.found: HttpSource | None = None
        self._undetected: Reading | None = None

    @property
    def latest(self) -> Reading | None:
        return self.found.latest if self.found is not None else self._undetected

    async def poll(self, session: aiohttp.ClientSession) -> None:
        if self.found is not None:
            await self.found.poll(session)
            return
        at = self.clock()
        problems = []
        try:
            body = await fetch(session, self.metrics_url)
            flavour = detect(body.decode("utf-8", "replace"))
            if flavour is not None:
                self._adopt(model_server_source(flavour, self.metrics_url, clock=self.clock), body, at)
                return
            problems.append(f"{self.metrics_url} has no vllm:, sglang: or llamacpp: metrics")
        except Unreadable as exc:
            problems.append(str(exc))
        try:
            body = await fetch(session, self.ollama_url + PS_PATH)
            read_ollama_ps(body, at)
            self._adopt(model_server_source("ollama", self.ollama_url, clock=self.clock), body, at)
            return
        except (Unreadable, SourceAbsent) as exc:
            problems.append(str(exc))
        reading = failed(self.name, at, "model server not recognised: " + "; ".join(problems))
        log_change(self._undetected, reading)
        self._undetected = reading

    def _adopt(self, source: HttpSource, body: bytes, at: float) -> None:
        log.info("GPU metrics: the upstream is %s (reading %s)", source.name, source.url)
        self.found = source
        try:
            source.record(source.parse(body, at))
        except SourceAbsent as exc:
            source.record(failed(source.name, at, str(exc)))

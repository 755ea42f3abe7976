"""Closed-loop HTTP/1.1 load generator: N keep-alive connections, each sending its next request as soon as
the previous response ends. Records, per request, time to first body byte and time to the last byte.
The N connections open together, so each one's first request is part of a cold burst (new
connections, and for a proxy new upstream connections); `ttfb_*_warm_ms` leave those out and
`ttfb_*_cold_ms` are those alone.

It is a raw asyncio protocol on uvloop with the httptools parser so that it stays cheap enough to
drive the proxy from one core; run it pinned to a different core than the system under test.

    python bench/loadgen.py http://127.0.0.1:8080/v1/chat/completions -c 64 -d 10 --stream
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httptools
import uvloop


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    first_bytes: list[float] = field(default_factory=list)
    first_bytes_warm: list[float] = field(default_factory=list)
    """Time to first byte of requests that were not the first on their connection."""
    first_bytes_cold: list[float] = field(default_factory=list)
    """Time to first byte of each connection's first request (the cold burst)."""
    chunks: int = 0
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    elapsed: float = 0.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


class Connection(asyncio.Protocol):
    def __init__(self, request: bytes, result: Result, deadline: float, done: asyncio.Future[None]) -> None:
        self.request = request
        self.result = result
        self.deadline = deadline
        self.done = done
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.sent = 0.0
        self.first: float | None = None
        self.warm = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.send()

    def send(self) -> None:
        assert self.transport is not None
        self.first = None
        self.sent = time.perf_counter()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.result.errors += 1
            self.finish()

    def on_body(self, body: bytes) -> None:
        self.result.chunks += 1
        if self.first is None:
            self.first = time.perf_counter()

    def on_message_complete(self) -> None:
        now = time.perf_counter()
        status = self.parser.get_status_code()
        self.result.statuses[status] = self.result.statuses.get(status, 0) + 1
        self.result.latencies.append(now - self.sent)
        first_byte = (self.first or now) - self.sent
        self.result.first_bytes.append(first_byte)
        (self.result.first_bytes_warm if self.warm else self.result.first_bytes_cold).append(first_byte)
        self.warm = True
        if now < self.deadline:
            self.send()
        else:
            self.finish()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.result.errors += 1
            self.done.set_result(None)

    def finish(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if not self.done.done():
            self.done.set_result(None)


async def run(url: str, concurrency: int, duration: float, body: bytes) -> Result:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = (
        f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer bench-key\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    loop = asyncio.get_running_loop()
    result = Result()
    started = time.perf_counter()
    deadline = started + duration
    waits = []
    for _ in range(concurrency):
        done: asyncio.Future[None] = loop.create_future()
        await loop.create_connection(lambda d=done: Connection(request, result, deadline, d), host, port)
        waits.append(done)
    await asyncio.gather(*waits)
    result.elapsed = time.perf_counter() - started
    return result


def summary(result: Result) -> dict[str, float]:
    ms = 1000.0
    return {
        "requests": len(result.latencies),
        "rps": len(result.latencies) / result.elapsed if result.elapsed else 0.0,
        "p50_ms": percentile(result.latencies, 50) * ms,
        "p90_ms": percentile(result.latencies, 90) * ms,
        "p99_ms": percentile(result.latencies, 99) * ms,
        "ttfb_p50_ms": percentile(result.first_bytes, 50) * ms,
        "ttfb_p99_ms": percentile(result.first_bytes, 99) * ms,
        "ttfb_p50_warm_ms": percentile(result.first_bytes_warm, 50) * ms,
        "ttfb_p99_warm_ms": percentile(result.first_bytes_warm, 99) * ms,
        "ttfb_p50_cold_ms": percentile(result.first_bytes_cold, 50) * ms,
        "ttfb_max_cold_ms": max(result.first_bytes_cold, default=0.0) * ms,
        "errors": result.errors,
        "non_2xx": sum(n for status, n in result.statuses.items() if not 200 <= status < 300),
        "body_events": result.chunks,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("-c", "--concurrency", type=int, default=1)
    parser.add_argument("-d", "--duration", type=float, default=5.0)
    parser.add_argument("--stream", action="store_true", help="ask for a streamed answer")
    parser.add_argument("--prompt-bytes", type=int, default=200)
    args = parser.parse_args()
    content = "x" * args.prompt_bytes
    body = json.dumps(
        {
            "model": "bench",
            "messages": [{"role": "user", "content": content}],
            "stream": args.stream,
            "user": "bench-user",
        },
        separators=(",", ":"),
    ).encode()
    result = uvloop.run(run(args.url, args.concurrency, args.duration, body))
    json.dump(summary(result), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()

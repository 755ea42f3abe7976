"""The cold burst alone: bursts of N new connections, each sending one request as it connects.

The stream bench's overall first-byte p99 is set by each round's first requests (docs/benchmarks.md,
"The cold burst, taken apart"). This repeats only that part, directly to the mock model server and
via Sentinel in interleaved bursts, in issue #2's layout (Sentinel and the mock on CPU 0, this load
generator and a null OTLP receiver on CPU 1), and reports the time to first byte by the order in
which the requests were sent: which of them wait, and for how long.

    python bench/cold_burst.py --bursts 30                  # streamed answers, 64 per burst
    python bench/cold_burst.py --bursts 30 --no-stream --env SENTINEL_AUDIT_MODE=off

Connections open one after another as `bench/loadgen.py` opens them (each sends its request as soon
as it is connected) and close after their answer; bursts are `--gap` seconds apart.

A second table sorts the bursts via Sentinel into thirds by their median first byte and shows, for
each third, the CPU that Sentinel and the mock used from the first send to the last first byte and
how many times each was switched in (`/proc/PID/schedstat`): fast bursts are the cheap ones.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

import httptools
import uvloop

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from loadgen import percentile  # noqa: E402
from proxy import PY, free_port, pinned, sentinel_env, settle, wait_http  # noqa: E402


def schedstat(pid: int) -> tuple[int, int]:
    """(nanoseconds run, times switched in) of a process's main thread."""
    fields = Path(f"/proc/{pid}/schedstat").read_text().split()
    return int(fields[0]), int(fields[2])


class _Watch:
    """Snapshots of the servers' schedstat at a burst's first send and at its last first byte."""

    def __init__(self, pids: list[int], connections: int) -> None:
        self.pids, self.left = pids, connections
        self.start = [schedstat(pid) for pid in pids]
        self.end: list[tuple[int, int]] = []

    def first_byte(self) -> None:
        self.left -= 1
        if not self.left:
            self.end = [schedstat(pid) for pid in self.pids]

    def used(self) -> list[tuple[float, int]]:
        """Per process: CPU milliseconds and switches-in between the two snapshots."""
        return [((e[0] - s[0]) / 1e6, e[1] - s[1]) for s, e in zip(self.start, self.end, strict=True)]


class _Request(asyncio.Protocol):
    def __init__(self, request: bytes, done: asyncio.Future[None], watch: _Watch) -> None:
        self.request, self.done, self.watch = request, done, watch
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.sent = self.first = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.sent = time.perf_counter()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._end(exc)

    def on_body(self, body: bytes) -> None:
        if not self.first:
            self.first = time.perf_counter()
            self.watch.first_byte()

    def on_message_complete(self) -> None:
        if not self.first:
            self.first = time.perf_counter()
            self.watch.first_byte()
        self._end(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(exc or ConnectionError("closed before the answer ended"))

    def _end(self, exc: BaseException | None) -> None:
        if self.transport is not None:
            self.transport.close()
        if not self.done.done():
            self.done.set_exception(exc) if exc else self.done.set_result(None)


async def burst(url: str, connections: int, body: bytes, pids: list[int]) -> Burst:
    """One burst: each request's time to first byte (ms, in sending order), the span from the
    first send to the last first byte (ms), and what the `pids` used meanwhile."""
    parts = urlsplit(url)
    request = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer bench-key\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    loop = asyncio.get_running_loop()
    sent: list[_Request] = []
    watch = _Watch(pids, connections)
    for _ in range(connections):
        request_protocol = _Request(request, loop.create_future(), watch)
        await loop.create_connection(lambda r=request_protocol: r, parts.hostname, parts.port)
        sent.append(request_protocol)
    await asyncio.gather(*(r.done for r in sent))
    span = (max(r.first for r in sent) - sent[0].sent) * 1e3
    return Burst([(r.first - r.sent) * 1e3 for r in sent], span, watch.used())


class Burst(NamedTuple):
    ttfb: list[float]
    span: float
    used: list[tuple[float, int]]
    """(CPU ms, switches-in) per watched process, up to the last first byte."""


def by_speed(bursts: list[Burst], names: list[str]) -> list[str]:
    """The bursts in thirds by median first byte: what each third cost the watched processes."""
    ordered = sorted(bursts, key=lambda b: statistics.median(b.ttfb))
    third = max(1, len(ordered) // 3)
    rows = []
    for label, part in (("fastest", ordered[:third]), ("middle", ordered[third:-third]), ("slowest", ordered[-third:])):
        if not part:
            continue
        cells = [f"{statistics.median(statistics.median(b.ttfb) for b in part):.1f}"]
        for index, _ in enumerate(names):
            cpu = statistics.median(b.used[index][0] for b in part)
            switches = statistics.median(b.used[index][1] for b in part)
            cells.append(f"{cpu:.1f} / {switches:.0f}")
        rows.append(f"| {label} third | " + " | ".join(cells) + " |")
    return rows


def table(name: str, bursts: list[Burst], groups: int = 8) -> list[str]:
    """Medians over bursts: by sending order (in `groups` groups), overall percentiles, the span."""
    size = len(bursts[0].ttfb)
    step = max(1, size // groups)
    cells = []
    for start in range(0, size, step):
        end = min(size, start + step)
        cells.append(f"{statistics.median(statistics.median(b.ttfb[start:end]) for b in bursts):.1f}")
    everything = [t for b in bursts for t in b.ttfb]
    p50, p67, p99 = (percentile(everything, q) for q in (50, 67, 99))
    span = statistics.median(b.span for b in bursts)
    return [f"| {name} | " + " | ".join(cells) + f" | {p50:.1f} / {p67:.1f} / {p99:.1f} | {span:.1f} |"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bursts", type=int, default=30, help="bursts each way (default 30)")
    parser.add_argument("-c", "--connections", type=int, default=64)
    parser.add_argument("--gap", type=float, default=0.2, help="seconds between bursts (default 0.2)")
    parser.add_argument("--no-stream", action="store_true", help="non-streamed answers")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for Sentinel (repeatable)")
    parser.add_argument(
        "--upstream-nice", type=int, default=0, help="nice value of the mock model server (0: issue #2's layout)"
    )
    args = parser.parse_args()

    upstream_port, proxy_port, admin_port, otlp_port = free_port(), free_port(), free_port(), free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="sentinel-cold-burst-"))
    env = sentinel_env(upstream_port, proxy_port, admin_port, otlp_port, data_dir)
    env.update(item.partition("=")[::2] for item in args.env)
    stream = not args.no_stream
    body = b'{"model":"m","messages":[{"role":"user","content":"hi"}]' + (b',"stream":true}' if stream else b"}")
    urls = {
        "direct": f"http://127.0.0.1:{upstream_port}/v1/chat/completions",
        "via Sentinel": f"http://127.0.0.1:{proxy_port}/v1/chat/completions",
    }
    results: dict[str, list[Burst]] = {name: [] for name in urls}
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, data_dir, True)
        mock = [PY, str(HERE / "upstream.py"), "--port", str(upstream_port), "--pace-ms", "2"]
        if args.upstream_nice:
            mock = ["nice", "-n", str(args.upstream_nice), *mock]
        pids = {}
        for name, cpu, cmd, extra in (
            ("mock", 0, mock, None),
            ("otlp", 1, [PY, str(HERE / "otlp_sink.py"), "--port", str(otlp_port)], None),
            ("sentinel", 0, [PY, "-m", "sentinel", "serve"], env),
        ):
            process = subprocess.Popen(
                pinned(cpu, cmd), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=extra
            )
            stack.callback(process.wait, 30)
            stack.callback(process.terminate)
            pids[name] = process.pid  # taskset and nice exec the command: the same process
        wait_http(f"http://127.0.0.1:{admin_port}/healthz")
        if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
            os.sched_setaffinity(0, {1})
        watched = {"direct": [pids["mock"]], "via Sentinel": [pids["sentinel"], pids["mock"]]}

        async def run() -> None:
            for _ in range(args.bursts):
                for name, url in urls.items():
                    results[name].append(await burst(url, args.connections, body, watched[name]))
                    await asyncio.sleep(args.gap)

        uvloop.run(run())
        settle(f"http://127.0.0.1:{admin_port}")

    size = args.connections
    step = max(1, size // 8)
    heads = [f"{start}-{min(size, start + step) - 1}" for start in range(0, size, step)]
    print(f"time to first byte, ms: medians over {args.bursts} bursts of {size} ({'streamed' if stream else 'whole'})")
    print()
    print("| | " + " | ".join(f"sent {h}" for h in heads) + " | p50 / p67 / p99 | last first byte |")
    print("|---|" + "---|" * len(heads) + "---|---|")
    for name, bursts in results.items():
        print("\n".join(table(name, bursts)))
    print()
    print("bursts via Sentinel by speed: median first byte (ms); CPU (ms) and times switched in, to the last byte")
    print()
    print("| | median first byte | Sentinel CPU / switches | mock CPU / switches |")
    print("|---|---|---|---|")
    print("\n".join(by_speed(results["via Sentinel"], ["sentinel", "mock"])))


if __name__ == "__main__":
    main()

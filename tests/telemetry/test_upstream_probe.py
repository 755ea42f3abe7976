"""The upstream probe against a real server that answers or drops probes as the test says: readiness
turns only after `fail_after` failed probes in a row; one lost probe changes nothing."""

from __future__ import annotations

import asyncio

import aiohttp
from prometheus_client import CollectorRegistry

from sentinel.telemetry.upstream import UpstreamProbe

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"


async def test_readiness_turns_only_after_failures_in_a_row() -> None:
    answering = True

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        if answering:
            writer.write(OK)
            await writer.drain()
            writer.close()
        else:
            writer.transport.abort()  # a reset: the probe fails

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    registry = CollectorRegistry()
    probe = UpstreamProbe(f"http://127.0.0.1:{port}", registry, fail_after=3)
    async with server, aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        assert await probe.check(session) is True
        assert probe.verdict is True
        answering = False
        for _ in range(2):
            assert await probe.check(session) is False
            assert probe.verdict is True  # one or two lost probes: still reachable for readiness
        assert registry.get_sample_value("sentinel_upstream_up") == 0  # the gauge is the last probe
        answering = True
        assert await probe.check(session) is True and probe.failures == 0
        answering = False
        for _ in range(3):
            await probe.check(session)
        assert probe.verdict is False and probe.failures == 3
        answering = True
        assert await probe.check(session) is True and probe.verdict is True

"""`UpstreamProbe`: is the model server reachable? Exported as `sentinel_upstream_up` and used by `/readyz`.

Any HTTP answer counts as up (even 401 or 404: the server is there); a refused, reset or timed-out
connection counts as down. `sentinel_upstream_up` is the last probe's answer; `/readyz` goes by
`verdict`, which turns down only after `fail_after` failed probes in a row, so one lost probe (a
restart, a GC pause) does not take every instance out of the load balancer at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time

import aiohttp
from prometheus_client import CollectorRegistry, Gauge

from sentinel import __version__

log = logging.getLogger("sentinel.upstream")

PROBE_USER_AGENT = f"sentinel-probe/{__version__}"


class UpstreamProbe:
    def __init__(
        self,
        upstream_url: str,
        registry: CollectorRegistry,
        *,
        path: str = "/v1/models",
        interval: float = 15.0,
        timeout: float = 5.0,
        api_key: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        fail_after: int = 3,
    ) -> None:
        self.url = upstream_url.rstrip("/") + path
        self.ssl_context = ssl_context
        """The proxy's own TLS settings (CA bundle, client certificate), so the probe sees what calls see."""
        self.interval = interval
        self.timeout = timeout
        self._headers = {"User-Agent": PROBE_USER_AGENT}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self.up: bool | None = None
        """The last probe's answer (None before the first)."""
        self.fail_after = fail_after
        self.failures = 0
        """Failed probes in a row."""
        self.verdict: bool | None = None
        """Reachable as far as readiness goes: False after `fail_after` failures in a row, True after
        a probe answered, None before either."""
        self.last_checked: float | None = None
        self._up = Gauge(
            "sentinel_upstream_up", "1 if the model server answered the last probe, else 0.", registry=registry
        )
        self._latency = Gauge(
            "sentinel_upstream_probe_duration_seconds", "How long the last probe took.", registry=registry
        )
        self._task: asyncio.Task[None] | None = None

    async def check(self, session: aiohttp.ClientSession) -> bool:
        started = time.perf_counter()
        try:
            async with session.get(self.url, headers=self._headers, allow_redirects=False) as resp:
                await resp.read()
            up = True
        except (aiohttp.ClientError, TimeoutError) as exc:
            up = False
            self.failures += 1
            if self.failures == self.fail_after:
                log.warning("upstream %s is not reachable (%d probes in a row): %r", self.url, self.failures, exc)
                self.verdict = False
            elif self.failures < self.fail_after:
                log.info(
                    "upstream %s did not answer a probe (%d of %d): %r", self.url, self.failures, self.fail_after, exc
                )
        if up:
            if self.verdict is False:
                log.info("upstream %s is reachable again", self.url)
            self.failures, self.verdict = 0, True
        self.up = up
        self.last_checked = time.time()
        self._up.set(1 if up else 0)
        self._latency.set(time.perf_counter() - started)
        return up

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        connector = aiohttp.TCPConnector(ssl=self.ssl_context) if self.ssl_context is not None else None
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            while True:
                await self.check(session)
                await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="upstream-probe")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

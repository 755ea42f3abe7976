"""`GpuMonitor`: every configured GPU source, exported as `sentinel_gpu_*` when Prometheus scrapes.

NVML is read during the scrape (cheap, local); HTTP sources are polled by a background task and
the scrape reads their last answer. A source that cannot be read, or whose last answer is older
than three poll intervals, shows only `sentinel_gpu_source_up{source} 0`: absent, never zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Iterable, Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sentinel.config import ConfigError
from sentinel.gpu.dcgm import read_dcgm
from sentinel.gpu.nvml import NvmlReader
from sentinel.gpu.polled import Clock, HttpSource, ModelServer, exposition, model_server_source
from sentinel.gpu.readings import Reading
from sentinel.gpu.settings import GpuSettings

MODEL_SERVERS = ("vllm", "sglang", "llamacpp", "ollama")


class PolledSource(Protocol):
    name: str

    @property
    def latest(self) -> Reading | None: ...

    async def poll(self, session: aiohttp.ClientSession) -> None: ...


def _families() -> dict[str, GaugeMetricFamily]:
    return {
        "used": GaugeMetricFamily(
            "sentinel_gpu_memory_used_bytes",
            "GPU memory in use (including driver-reserved), by GPU and source; Ollama: its models' VRAM, gpu=all.",
            labels=["gpu", "source"],
        ),
        "total": GaugeMetricFamily(
            "sentinel_gpu_memory_total_bytes", "Total GPU memory, by GPU and source.", labels=["gpu", "source"]
        ),
        "ratio": GaugeMetricFamily(
            "sentinel_gpu_memory_utilization_ratio", "Used over total GPU memory, 0..1.", labels=["gpu", "source"]
        ),
        "kv": GaugeMetricFamily(
            "sentinel_gpu_kv_cache_usage_ratio",
            "Share of the model server's KV cache in use, 0..1 (vLLM, SGLang, llama.cpp).",
            labels=["source"],
        ),
        "vram": GaugeMetricFamily(
            "sentinel_gpu_model_vram_ratio",
            "Share of the loaded models' memory held in VRAM, 0..1 (Ollama); below 1: offloaded to CPU.",
            labels=["source"],
        ),
        "up": GaugeMetricFamily(
            "sentinel_gpu_source_up",
            "1 if the GPU source was read, 0 if it is configured or probed but absent, failing or stale.",
            labels=["source"],
        ),
    }


class GpuCollector(Collector):
    def __init__(
        self,
        nvml: NvmlReader | None,
        polled: Sequence[PolledSource],
        stale_after: float,
        *,
        clock: Clock = time.monotonic,
    ) -> None:
        self.nvml = nvml
        self.polled = list(polled)
        self.stale_after = stale_after
        self.clock = clock  # the polled sources' clock: a reading's age is `clock() - reading.at`

    def readings(self) -> list[Reading]:
        readings = [self.nvml.read()] if self.nvml is not None else []
        now = self.clock()
        for source in self.polled:
            reading = source.latest
            if reading is None:  # not polled yet: nothing known, nothing claimed
                continue
            if reading.ok and now - reading.at > self.stale_after:
                reading = reading.absent(f"stale: last read {now - reading.at:.0f} s ago")
            readings.append(reading)
        return readings

    def describe(self) -> Iterable[Metric]:
        # Without describe() the registry would call collect() at registration, touching NVML.
        return list(_families().values())

    def collect(self) -> Iterable[Metric]:
        families = _families()
        for r in self.readings():
            families["up"].add_metric([r.source], 1.0 if r.ok else 0.0)
            if not r.ok:
                continue
            for m in r.memory:
                families["used"].add_metric([m.gpu, r.source], m.used_bytes)
                if m.total_bytes:
                    families["total"].add_metric([m.gpu, r.source], m.total_bytes)
                if (ratio := m.utilization) is not None:
                    families["ratio"].add_metric([m.gpu, r.source], ratio)
            if r.kv_cache_usage is not None:
                families["kv"].add_metric([r.source], r.kv_cache_usage)
            if r.model_vram_ratio is not None:
                families["vram"].add_metric([r.source], r.model_vram_ratio)
        return list(families.values())


class GpuMonitor:
    """Owns the NVML reader, the polled sources and the task polling them."""

    def __init__(
        self,
        nvml: NvmlReader | None,
        polled: Sequence[PolledSource],
        *,
        interval: float = 15.0,
        timeout: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.interval = interval
        self.timeout = timeout
        self.ssl_context = ssl_context
        """The upstream's TLS settings (private CA, client certificate), for sources on the upstream's
        origin only: another host (a DCGM exporter) is read with the system's CAs and no client
        certificate, and never without verification."""
        self.tls_origin: str | None = None
        self.collector = GpuCollector(nvml, polled, stale_after=3 * interval + timeout)
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(
        cls,
        settings: GpuSettings,
        upstream_url: str | None,
        *,
        nvml: Any = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> GpuMonitor:
        """`nvml` replaces the `pynvml` module (tests pass a fake shaped like it)."""
        sources = settings.sources
        auto = sources == ["auto"]
        reader = NvmlReader.open(required="nvml" in sources, nvml=nvml) if auto or "nvml" in sources else None
        base = upstream_url.rstrip("/") if upstream_url else None
        metrics_url = settings.metrics_url or (base + "/metrics" if base else None)
        ollama_url = settings.ollama_url or base
        polled: list[PolledSource] = []
        if auto and metrics_url and ollama_url:
            polled.append(ModelServer(metrics_url, ollama_url))
        for flavour in (s for s in sources if s in MODEL_SERVERS):
            url = ollama_url if flavour == "ollama" else metrics_url
            if url is None:
                key = "ollama_url" if flavour == "ollama" else "metrics_url"
                raise ConfigError(f"gpu source {flavour!r} needs upstream.url or gpu.{key}")
            polled.append(model_server_source(flavour, url))
        if settings.dcgm_url and (auto or "dcgm" in sources):
            polled.append(HttpSource("dcgm", settings.dcgm_url, exposition(read_dcgm)))
        monitor = cls(reader, polled, interval=settings.interval, timeout=settings.timeout, ssl_context=ssl_context)
        monitor.tls_origin = _origin(upstream_url) if upstream_url else None
        return monitor

    def on_upstream(self, source: PolledSource) -> bool:
        """Whether every URL `source` reads is on the upstream's origin (so its TLS settings apply)."""
        found = (getattr(source, name, None) for name in ("url", "metrics_url", "ollama_url"))
        urls = [url for url in found if isinstance(url, str)]
        return bool(urls) and self.tls_origin is not None and all(_origin(url) == self.tls_origin for url in urls)

    async def poll_once(
        self, session: aiohttp.ClientSession, upstream_session: aiohttp.ClientSession | None = None
    ) -> None:
        """Poll every source once; those on the upstream's origin through `upstream_session` (made
        with the upstream's TLS context) when given."""
        await asyncio.gather(
            *(
                source.poll(upstream_session if upstream_session is not None and self.on_upstream(source) else session)
                for source in self.collector.polled
            )
        )

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with contextlib.AsyncExitStack() as stack:
            session = await stack.enter_async_context(aiohttp.ClientSession(timeout=timeout))
            upstream_session = None
            if self.ssl_context is not None:
                connector = aiohttp.TCPConnector(ssl=self.ssl_context)
                upstream_session = await stack.enter_async_context(
                    aiohttp.ClientSession(timeout=timeout, connector=connector)
                )
            while True:
                await self.poll_once(session, upstream_session)
                await asyncio.sleep(self.interval)

    def start(self) -> None:
        if self.collector.polled and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="gpu-poller")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.collector.nvml is not None:
            self.collector.nvml.close()


def _origin(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"

"""HTTP GPU sources polled from real local servers: explicit sources, auto-detection, failures, staleness."""

from __future__ import annotations

from collections.abc import Callable

import aiohttp
import pytest
import requests
from prometheus_client import CollectorRegistry

from sentinel.gpu.model_server import read_vllm
from sentinel.gpu.monitor import GpuCollector, GpuMonitor
from sentinel.gpu.polled import HttpSource, exposition
from sentinel.gpu.readings import MIB
from sentinel.gpu.settings import GpuSettings
from tests.conftest import Running, wait_until
from tests.support.gpu_sources import SGLANG_METRICS, VLLM_METRICS, dcgm_metrics, ollama_ps
from tests.support.loop import BackgroundLoop
from tests.support.site import JSON, StaticSite, running_site
from tests.support.upstream import Script, ScriptedUpstream, free_port


@pytest.fixture
def site(servers: BackgroundLoop) -> StaticSite:
    return servers.enter(running_site())


class Polled:
    """A monitor built from settings, polled on demand, read through its own registry."""

    def __init__(self, servers: BackgroundLoop, settings: GpuSettings, upstream_url: str | None) -> None:
        self.servers = servers
        self.monitor = GpuMonitor.from_settings(settings, upstream_url, nvml=_NO_NVML)
        self.registry = CollectorRegistry()
        self.registry.register(self.monitor.collector)

    def poll(self) -> None:
        async def once() -> None:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
                await self.monitor.poll_once(session)

        self.servers.run(once())

    def value(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)


class _NoNvml:
    """No NVIDIA driver here: auto mode must not report NVML at all."""

    class NVMLError(Exception):
        pass

    def nvmlInit(self) -> None:
        raise self.NVMLError("NVML Shared Library Not Found")


_NO_NVML = _NoNvml()


def test_explicit_vllm_source_follows_the_server(servers: BackgroundLoop, site: StaticSite) -> None:
    site.page("/metrics", VLLM_METRICS)
    polled = Polled(servers, GpuSettings(sources=["vllm"]), site.url)
    assert polled.value("sentinel_gpu_source_up", source="vllm") is None  # not polled yet: nothing claimed
    polled.poll()
    assert polled.value("sentinel_gpu_kv_cache_usage_ratio", source="vllm") == 0.6875
    assert polled.value("sentinel_gpu_source_up", source="vllm") == 1

    site.page("/metrics", VLLM_METRICS.replace("0.6875", "0.97"))
    polled.poll()
    assert polled.value("sentinel_gpu_kv_cache_usage_ratio", source="vllm") == 0.97

    site.page("/metrics", "Internal Server Error", status=500)
    polled.poll()
    assert polled.value("sentinel_gpu_source_up", source="vllm") == 0
    assert polled.value("sentinel_gpu_kv_cache_usage_ratio", source="vllm") is None


def test_explicit_source_pointing_at_the_wrong_server_is_absent(servers: BackgroundLoop, site: StaticSite) -> None:
    site.page("/metrics", SGLANG_METRICS)
    polled = Polled(servers, GpuSettings(sources=["vllm"]), site.url)
    polled.poll()
    assert polled.value("sentinel_gpu_source_up", source="vllm") == 0


def test_auto_detects_vllm_and_sticks_to_it(servers: BackgroundLoop, site: StaticSite) -> None:
    site.page("/metrics", VLLM_METRICS)
    polled = Polled(servers, GpuSettings(), site.url)
    polled.poll()
    polled.poll()
    assert polled.value("sentinel_gpu_kv_cache_usage_ratio", source="vllm") == 0.6875
    assert polled.value("sentinel_gpu_source_up", source="model_server") is None
    assert site.hits["/metrics"] == 2 and site.hits["/api/ps"] == 0

    site.page("/metrics", "", status=503)
    polled.poll()
    assert polled.value("sentinel_gpu_source_up", source="vllm") == 0
    assert site.hits["/api/ps"] == 0  # once known, the server is not probed as something else


def test_auto_detects_ollama(servers: BackgroundLoop, site: StaticSite) -> None:
    site.page("/api/ps", ollama_ps(("deepseek-r1:70b", 42_000_000_000, 21_000_000_000)), JSON)
    polled = Polled(servers, GpuSettings(), site.url)
    polled.poll()
    polled.poll()
    assert polled.value("sentinel_gpu_memory_used_bytes", gpu="all", source="ollama") == 21_000_000_000
    assert polled.value("sentinel_gpu_model_vram_ratio", source="ollama") == 0.5
    assert polled.value("sentinel_gpu_memory_utilization_ratio", gpu="all", source="ollama") is None
    assert site.hits["/metrics"] == 1  # Ollama has no /metrics; not asked again once detected


def test_auto_with_an_unknown_upstream_says_so(servers: BackgroundLoop, site: StaticSite) -> None:
    site.page("/metrics", "# HELP go_goroutines Number of goroutines.\ngo_goroutines 8\n")
    polled = Polled(servers, GpuSettings(), site.url)
    polled.poll()
    assert polled.value("sentinel_gpu_source_up", source="model_server") == 0
    text = "".join(
        f"{s.name} {s.value}\n" for m in polled.registry.collect() for s in m.samples if s.name.startswith("sentinel_")
    )
    assert text == "sentinel_gpu_source_up 0.0\n"


def test_dcgm_and_ollama_together(servers: BackgroundLoop, site: StaticSite) -> None:
    site.page("/metrics", dcgm_metrics([(72000, 8951, 568)]))
    site.page("/api/ps", ollama_ps(("deepseek-r1:14b", 11_998_441_472, 11_998_441_472)), JSON)
    settings = GpuSettings(sources=["ollama", "dcgm"], dcgm_url=site.url + "/metrics", ollama_url=site.url)
    polled = Polled(servers, settings, None)
    polled.poll()
    assert polled.value("sentinel_gpu_memory_used_bytes", gpu="0", source="dcgm") == 72568 * MIB
    assert polled.value("sentinel_gpu_memory_utilization_ratio", gpu="0", source="dcgm") == pytest.approx(72568 / 81519)
    assert polled.value("sentinel_gpu_memory_used_bytes", gpu="all", source="ollama") == 11_998_441_472
    assert polled.value("sentinel_gpu_source_up", source="dcgm") == 1


def test_unreachable_source_is_absent(servers: BackgroundLoop) -> None:
    url = f"http://127.0.0.1:{free_port()}/metrics"
    polled = Polled(servers, GpuSettings(sources=["dcgm"], dcgm_url=url), None)
    polled.poll()
    assert polled.value("sentinel_gpu_source_up", source="dcgm") == 0


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_stale_reading_is_absent(servers: BackgroundLoop, site: StaticSite) -> None:
    site.page("/metrics", VLLM_METRICS)
    clock = FakeClock()
    source = HttpSource("vllm", site.url + "/metrics", exposition(read_vllm), clock=clock)
    collector = GpuCollector(None, [source], stale_after=0.25, clock=clock)
    registry = CollectorRegistry()
    registry.register(collector)

    async def poll() -> None:
        async with aiohttp.ClientSession() as session:
            await source.poll(session)

    servers.run(poll())
    assert source.latest is not None and source.latest.at == 1000.0
    assert registry.get_sample_value("sentinel_gpu_source_up", {"source": "vllm"}) == 1
    clock.now = 1000.25  # exactly `stale_after` old: still fresh
    assert registry.get_sample_value("sentinel_gpu_source_up", {"source": "vllm"}) == 1
    assert registry.get_sample_value("sentinel_gpu_kv_cache_usage_ratio", {"source": "vllm"}) == 0.6875
    clock.now = 1000.5  # older than `stale_after`: absent, its values gone
    assert registry.get_sample_value("sentinel_gpu_source_up", {"source": "vllm"}) == 0
    assert registry.get_sample_value("sentinel_gpu_kv_cache_usage_ratio", {"source": "vllm"}) is None
    servers.run(poll())  # read again: fresh again
    assert registry.get_sample_value("sentinel_gpu_source_up", {"source": "vllm"}) == 1


def test_sentinel_exports_gpu_metrics_from_its_upstream_and_dcgm(
    upstream: ScriptedUpstream, site: StaticSite, start_sentinel: Callable[..., Running]
) -> None:
    upstream.script("/metrics", Script(headers={"Content-Type": "text/plain"}, chunks=[VLLM_METRICS.encode()]))
    site.page("/metrics", dcgm_metrics([(72000, 8951, 568), (10, 80939, 570)]))
    gpu = {"sources": ["nvml", "vllm", "dcgm"], "dcgm_url": site.url + "/metrics", "interval": 0.2, "timeout": 30}
    proxy = start_sentinel(upstream.url, gpu=gpu)
    texts: list[str] = []

    def both_read() -> bool:
        texts.append(requests.get(proxy.admin_url + "/metrics", timeout=30).text)
        return all(f'sentinel_gpu_source_up{{source="{source}"}} 1.0' in texts[-1] for source in ("vllm", "dcgm"))

    wait_until(both_read)  # the two are polled concurrently: wait until one scrape shows both
    text = texts[-1]
    assert 'sentinel_gpu_kv_cache_usage_ratio{source="vllm"} 0.6875' in text
    assert 'sentinel_gpu_memory_used_bytes{gpu="1",source="dcgm"}' in text
    assert 'sentinel_gpu_source_up{source="nvml"} 0.0' in text  # configured, no GPU driver on a test machine
    assert not [s for s in upstream.seen if s.path == "/metrics"]  # Sentinel's own probes are not recorded traffic

    wait_until(lambda: site.hits["/metrics"] >= 3)  # polled in the background, every interval


def test_sentinel_defaults_to_auto(upstream: ScriptedUpstream, start_sentinel: Callable[..., Running]) -> None:
    proxy = start_sentinel(upstream.url)
    wait_until(lambda: proxy.metric("sentinel_gpu_source_up", source="model_server") == 0)

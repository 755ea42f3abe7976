"""NVML read at scrape time: memory info v2, the v1 fallback, lost GPUs, and no GPU at all."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from sentinel.gpu.monitor import GpuMonitor
from sentinel.gpu.nvml import NvmlReader
from sentinel.gpu.settings import GpuSettings
from tests.support.fake_nvml import FakeNvml, Gpu

GIB = 1024**3


def registry_for(monitor: GpuMonitor) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(monitor.collector)
    return registry


def test_every_gpu_is_read_with_memory_info_v2_at_scrape_time() -> None:
    nvml = FakeNvml([Gpu(total=80 * GIB, used=72 * GIB, reserved=GIB // 2), Gpu(total=80 * GIB, used=8 * GIB)])
    registry = registry_for(GpuMonitor.from_settings(GpuSettings(sources=["nvml"]), None, nvml=nvml))
    nvml.calls.clear()

    value = registry.get_sample_value
    assert value("sentinel_gpu_memory_used_bytes", {"gpu": "0", "source": "nvml"}) == 72 * GIB
    assert value("sentinel_gpu_memory_total_bytes", {"gpu": "0", "source": "nvml"}) == 80 * GIB
    assert value("sentinel_gpu_memory_utilization_ratio", {"gpu": "0", "source": "nvml"}) == 0.9
    assert value("sentinel_gpu_memory_utilization_ratio", {"gpu": "1", "source": "nvml"}) == 0.1
    assert value("sentinel_gpu_source_up", {"source": "nvml"}) == 1
    assert set(nvml.calls) == {"memory_v2"}

    nvml.gpus[1].used = 40 * GIB  # read live, not cached
    assert value("sentinel_gpu_memory_utilization_ratio", {"gpu": "1", "source": "nvml"}) == 0.5


def test_old_driver_without_v2_falls_back_to_v1_once() -> None:
    nvml = FakeNvml([Gpu(total=24 * GIB, used=12 * GIB)], has_v2=False)
    reader = NvmlReader.open(required=True, nvml=nvml)
    assert reader is not None
    first, second = reader.read(), reader.read()
    assert first.ok and second.ok and first.memory[0].utilization == 0.5
    assert nvml.calls == ["init", "memory_v2", "memory_v1", "memory_v1"]


def test_lost_gpu_reports_the_source_absent_not_zero() -> None:
    nvml = FakeNvml([Gpu(total=80 * GIB, used=10 * GIB)])
    registry = registry_for(GpuMonitor.from_settings(GpuSettings(sources=["nvml"]), None, nvml=nvml))
    nvml.lost.add(0)
    assert registry.get_sample_value("sentinel_gpu_source_up", {"source": "nvml"}) == 0
    assert registry.get_sample_value("sentinel_gpu_memory_used_bytes", {"gpu": "0", "source": "nvml"}) is None
    assert registry.get_sample_value("sentinel_gpu_memory_utilization_ratio", {"gpu": "0", "source": "nvml"}) is None


def test_no_driver_auto_reports_nothing_explicit_reports_absent() -> None:
    missing = FakeNvml(init_error=FakeNvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    auto = registry_for(GpuMonitor.from_settings(GpuSettings(), None, nvml=missing))
    assert auto.get_sample_value("sentinel_gpu_source_up", {"source": "nvml"}) is None

    explicit = registry_for(GpuMonitor.from_settings(GpuSettings(sources=["nvml"]), None, nvml=missing))
    assert explicit.get_sample_value("sentinel_gpu_source_up", {"source": "nvml"}) == 0
    reader = NvmlReader.open(required=True, nvml=missing)
    assert reader is not None and "NVML Shared Library Not Found" in (reader.read().problem or "")


def test_driver_without_gpus_counts_as_absent() -> None:
    assert NvmlReader.open(required=False, nvml=FakeNvml([])) is None
    reader = NvmlReader.open(required=True, nvml=FakeNvml([]))
    assert reader is not None and not reader.read().ok


def test_stop_shuts_nvml_down() -> None:
    import asyncio

    nvml = FakeNvml([Gpu(total=GIB, used=0)])
    monitor = GpuMonitor.from_settings(GpuSettings(sources=["nvml"]), None, nvml=nvml)
    asyncio.run(monitor.stop())
    assert nvml.calls[-1] == "shutdown" and not nvml.initialised


def test_the_real_nvidia_ml_py_on_this_machine() -> None:
    """The installed nvidia-ml-py: with a GPU, real memory values; without one (CI), absent, not zero."""
    reader = NvmlReader.open(required=True)
    assert reader is not None
    reading = reader.read()
    try:
        if reading.ok:
            assert reading.memory and all(m.total_bytes and 0 <= m.used_bytes <= m.total_bytes for m in reading.memory)
        else:
            assert not reading.memory and "NVML" in (reading.problem or "")
            assert NvmlReader.open(required=False) is None
    finally:
        reader.close()

"""Each source's answer, as the real servers write it, turned into a `Reading`."""

from __future__ import annotations

import pytest

from sentinel.gpu.dcgm import read_dcgm
from sentinel.gpu.model_server import detect, read_llamacpp, read_sglang, read_vllm
from sentinel.gpu.ollama import read_ollama_ps
from sentinel.gpu.readings import MIB, SourceAbsent
from tests.support.gpu_sources import (
    LLAMACPP_LEGACY_METRICS,
    LLAMACPP_METRICS,
    SGLANG_METRICS,
    VLLM_LEGACY_METRICS,
    VLLM_METRICS,
    dcgm_metrics,
    ollama_ps,
)


def test_vllm_kv_cache_is_the_fullest_engine() -> None:
    reading = read_vllm(VLLM_METRICS, 1.0)
    assert reading.ok and reading.source == "vllm" and reading.kv_cache_usage == 0.6875 and not reading.memory


def test_vllm_before_the_rename() -> None:
    assert read_vllm(VLLM_LEGACY_METRICS, 1.0).kv_cache_usage == 0.915


def test_sglang_token_usage() -> None:
    assert read_sglang(SGLANG_METRICS, 1.0).kv_cache_usage == 0.28


def test_llamacpp_with_and_without_the_kv_cache_metric() -> None:
    assert read_llamacpp(LLAMACPP_LEGACY_METRICS, 1.0).kv_cache_usage == 0.125
    current = read_llamacpp(LLAMACPP_METRICS, 1.0)
    assert current.ok and current.kv_cache_usage is None  # absent, not 0


def test_wrong_server_is_absent() -> None:
    for read, text in ((read_vllm, SGLANG_METRICS), (read_sglang, VLLM_METRICS), (read_llamacpp, VLLM_METRICS)):
        with pytest.raises(SourceAbsent):
            read(text, 1.0)


def test_detect_tells_the_servers_apart() -> None:
    assert detect(VLLM_METRICS) == "vllm"
    assert detect(SGLANG_METRICS) == "sglang"
    assert detect(LLAMACPP_METRICS) == "llamacpp"
    assert detect("# HELP go_goroutines x\ngo_goroutines 8\n") is None
    # A name that only appears in a comment does not count.
    assert detect("# HELP vllm:kv_cache_usage_perc x\n# TYPE vllm:kv_cache_usage_perc gauge\n") is None


def test_dcgm_memory_per_gpu_counts_reserved_as_used() -> None:
    reading = read_dcgm(dcgm_metrics([(72000, 8951, 568), (10, 80939, 570)]), 1.0)
    first, second = reading.memory
    assert (first.gpu, first.used_bytes, first.total_bytes) == ("0", (72000 + 568) * MIB, 81519 * MIB)
    assert second.gpu == "1" and second.utilization == pytest.approx(580 / 81519)


def test_dcgm_without_the_reserved_field() -> None:
    (memory,) = read_dcgm(dcgm_metrics([(40000, 40000, 0)], reserved=False), 1.0).memory
    assert memory.utilization == 0.5


def test_dcgm_mig_instances_are_separate() -> None:
    text = (
        'DCGM_FI_DEV_FB_USED{gpu="0",GPU_I_ID="3",GPU_I_PROFILE="1g.6gb"} 1000\n'
        'DCGM_FI_DEV_FB_FREE{gpu="0",GPU_I_ID="3",GPU_I_PROFILE="1g.6gb"} 5012\n'
        'DCGM_FI_DEV_FB_USED{gpu="0",GPU_I_ID="4",GPU_I_PROFILE="1g.6gb"} 0\n'
        'DCGM_FI_DEV_FB_FREE{gpu="0",GPU_I_ID="4",GPU_I_PROFILE="1g.6gb"} 6012\n'
    )
    assert [m.gpu for m in read_dcgm(text, 1.0).memory] == ["0/3", "0/4"]


def test_dcgm_page_without_memory_fields_is_absent() -> None:
    with pytest.raises(SourceAbsent):
        read_dcgm('DCGM_FI_DEV_GPU_UTIL{gpu="0"} 3\n', 1.0)


def test_ollama_vram_and_offload() -> None:
    full = read_ollama_ps(ollama_ps(("deepseek-r1:14b", 11_998_441_472, 11_998_441_472)), 1.0)
    assert full.memory[0].gpu == "all" and full.memory[0].used_bytes == 11_998_441_472
    assert full.memory[0].total_bytes is None and full.memory[0].utilization is None
    assert full.model_vram_ratio == 1.0

    spilled = read_ollama_ps(
        ollama_ps(("deepseek-r1:70b", 42_000_000_000, 21_000_000_000), ("bge-m3", 1_000_000_000, 1_000_000_000)), 1.0
    )
    assert spilled.memory[0].used_bytes == 22_000_000_000
    assert spilled.model_vram_ratio == pytest.approx(22 / 43)


def test_ollama_with_nothing_loaded_uses_no_vram() -> None:
    idle = read_ollama_ps(b'{"models":[]}', 1.0)
    assert idle.ok and idle.memory[0].used_bytes == 0 and idle.model_vram_ratio is None


def test_not_ollama_is_absent() -> None:
    for body in (b"404 page not found", b'{"object":"list","data":[]}'):
        with pytest.raises(SourceAbsent):
            read_ollama_ps(body, 1.0)

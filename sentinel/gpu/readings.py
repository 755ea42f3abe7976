"""`Reading`: what one GPU source said at one moment, the value every source module produces."""

from __future__ import annotations

from dataclasses import dataclass, replace

MIB = 1024 * 1024


class SourceAbsent(Exception):
    """The source answered, but not with what it should (wrong server, metric missing, bad JSON)."""


@dataclass(frozen=True, slots=True)
class GpuMemory:
    """Memory of one GPU (or, for Ollama, of all GPUs together: `gpu="all"`), in bytes.

    `used_bytes` includes memory the driver reserves, as NVML's memory info v2 and DCGM's
    used-percent count it. `total_bytes` is None where the source does not know it (Ollama).
    """

    gpu: str
    used_bytes: float
    total_bytes: float | None = None

    @property
    def utilization(self) -> float | None:
        if not self.total_bytes:
            return None
        return self.used_bytes / self.total_bytes


@dataclass(frozen=True, slots=True)
class Reading:
    """One source's values. `ok=False`: configured or probed, but absent or failing; then no values."""

    source: str
    ok: bool
    at: float
    """`time.monotonic()` when it was read, so the collector can tell stale readings apart."""
    memory: tuple[GpuMemory, ...] = ()
    kv_cache_usage: float | None = None
    """Share of the KV cache in use, 0..1 (vLLM, SGLang, older llama.cpp)."""
    model_vram_ratio: float | None = None
    """Share of the loaded models' memory that sits in VRAM, 0..1 (Ollama); below 1 means offloaded to CPU."""
    problem: str | None = None

    def absent(self, problem: str) -> Reading:
        return replace(self, ok=False, memory=(), kv_cache_usage=None, model_vram_ratio=None, problem=problem)


def failed(source: str, at: float, problem: str) -> Reading:
    return Reading(source, ok=False, at=at, problem=problem)

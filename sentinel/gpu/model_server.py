"""KV-cache usage from the model server's own `/metrics`: vLLM, SGLang and llama.cpp.

On vLLM and SGLang the GPU memory is preallocated (~90% used all the time), so the share of the KV
cache in use is the pressure signal. Names, from each project's metrics documentation:

- vLLM: `vllm:kv_cache_usage_perc` (a 0..1 fraction despite the name; older releases exported
  `vllm:gpu_cache_usage_perc`), one series per engine and model.
- SGLang: `sglang:token_usage` (0..1), the share of KV-cache token slots in use.
- llama.cpp `llama-server --metrics`: `llamacpp:*`. `llamacpp:kv_cache_usage_ratio` existed until
  mid-2025 (ggml-org/llama.cpp#13660 removed it); current builds are reported as up with no
  KV-cache value, never as 0.
"""

from __future__ import annotations

from collections.abc import Callable

from sentinel.gpu.exposition import prefixes_present, samples
from sentinel.gpu.readings import Reading, SourceAbsent

VLLM_KV = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
SGLANG_KV = ("sglang:token_usage",)
LLAMACPP_KV = ("llamacpp:kv_cache_usage_ratio",)

# What tells the servers apart in an exposition, in the order they are tried.
FLAVOURS = {"vllm": "vllm:", "sglang": "sglang:", "llamacpp": "llamacpp:"}


def _worst(text: str, names: tuple[str, ...]) -> float | None:
    """The highest value over every series (engines, data-parallel ranks, models) of the first name present."""
    for name in names:
        values = [s.value for s in samples(text, (name,))]
        if values:
            return max(values)
    return None


def read_vllm(text: str, at: float) -> Reading:
    usage = _worst(text, VLLM_KV)
    if usage is None:
        raise SourceAbsent(f"no {' or '.join(VLLM_KV)} in the exposition (is this vLLM?)")
    return Reading("vllm", ok=True, at=at, kv_cache_usage=usage)


def read_sglang(text: str, at: float) -> Reading:
    usage = _worst(text, SGLANG_KV)
    if usage is None:
        raise SourceAbsent("no sglang:token_usage in the exposition (is this SGLang with --enable-metrics?)")
    return Reading("sglang", ok=True, at=at, kv_cache_usage=usage)


def read_llamacpp(text: str, at: float) -> Reading:
    if not prefixes_present(text, ("llamacpp:",)):
        raise SourceAbsent("no llamacpp:* metrics in the exposition (is this llama-server with --metrics?)")
    return Reading("llamacpp", ok=True, at=at, kv_cache_usage=_worst(text, LLAMACPP_KV))


READERS: dict[str, Callable[[str, float], Reading]] = {
    "vllm": read_vllm,
    "sglang": read_sglang,
    "llamacpp": read_llamacpp,
}


def detect(text: str) -> str | None:
    """Which model server wrote this exposition, if any of the known ones."""
    found = prefixes_present(text, FLAVOURS.values())
    for flavour, prefix in FLAVOURS.items():
        if prefix in found:
            return flavour
    return None

"""GPU memory held by the models Ollama has loaded, from `GET /api/ps`.

Ollama's API documentation: `/api/ps` lists loaded models, each with `size` (bytes the model takes
in memory) and `size_vram` (the part of it in GPU memory). The sum of `size_vram` is the VRAM
Ollama uses; `size_vram / size` below 1 means layers were offloaded to the CPU (slow). Ollama does
not report the GPUs' total, so no utilisation ratio comes from here.
"""

from __future__ import annotations

import orjson

from sentinel.gpu.readings import GpuMemory, Reading, SourceAbsent

PS_PATH = "/api/ps"


def read_ollama_ps(body: bytes, at: float) -> Reading:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise SourceAbsent("/api/ps did not answer JSON (is this Ollama?)") from None
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, list):
        raise SourceAbsent("/api/ps answer has no 'models' list (is this Ollama?)")
    in_vram = 0.0
    size = 0.0
    for model in models:
        if isinstance(model, dict):
            in_vram += _number(model.get("size_vram"))
            size += _number(model.get("size"))
    return Reading(
        "ollama",
        ok=True,
        at=at,
        memory=(GpuMemory("all", in_vram),),
        model_vram_ratio=in_vram / size if size > 0 else None,
    )


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0

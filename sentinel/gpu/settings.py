"""The `gpu` settings section (env `SENTINEL_GPU_*`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from sentinel.sections import Section as _Section

GpuSource = Literal["auto", "nvml", "vllm", "sglang", "llamacpp", "ollama", "dcgm"]


class GpuSettings(_Section):
    """Where GPU memory and KV-cache usage are read from (exported as ``sentinel_gpu_*``).

    ``sources: [auto]`` uses NVML when a GPU and driver are present, detects the model server behind
    ``upstream.url`` (vLLM, SGLang, llama.cpp ``/metrics`` or Ollama ``/api/ps``) and reads a DCGM
    exporter when ``dcgm_url`` is set. An explicit list, e.g. ``[nvml, vllm]``, reports every listed
    source, as absent (``sentinel_gpu_source_up 0``) while it cannot be read. ``[]`` turns GPU metrics off.
    """

    sources: list[GpuSource] = Field(default_factory=lambda: list[GpuSource](["auto"]))
    metrics_url: str | None = Field(
        default=None, description="The model server's Prometheus endpoint; default: upstream.url + /metrics."
    )
    ollama_url: str | None = Field(default=None, description="Ollama's base URL for /api/ps; default: upstream.url.")
    dcgm_url: str | None = Field(
        default=None, description="A DCGM exporter's metrics URL, e.g. http://dcgm-exporter:9400/metrics."
    )
    interval: float = Field(default=15.0, gt=0, description="How often HTTP sources are polled.")
    timeout: float = Field(default=5.0, gt=0, description="How long one poll may take.")

    @field_validator("metrics_url", "ollama_url", "dcgm_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():  # an empty env var (compose `${VAR:-}`) means unset
            return None
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
        return value

    @field_validator("sources")
    @classmethod
    def _sources(cls, value: list[GpuSource]) -> list[GpuSource]:
        if "auto" in value and len(value) > 1:
            raise ValueError("'auto' cannot be combined with explicit sources")
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _dcgm_needs_url(self) -> GpuSettings:
        if "dcgm" in self.sources and self.dcgm_url is None:
            raise ValueError("source 'dcgm' needs gpu.dcgm_url (env SENTINEL_GPU_DCGM_URL)")
        return self

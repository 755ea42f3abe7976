"""What GPU sources really answer, shaped from each project's documentation and published samples.

vLLM `/metrics` (v1 engine: `vllm:kv_cache_usage_perc`; older `vllm:gpu_cache_usage_perc`), SGLang
`/metrics` (`--enable-metrics`), llama.cpp `llama-server --metrics` (before and after the KV-cache
metrics were removed), the DCGM exporter's default counters (MiB), and Ollama `GET /api/ps`.
"""

from __future__ import annotations

import orjson

MODEL = "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B"

VLLM_METRICS = f"""\
# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{{generation="0"}} 12233.0
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0",model_name="{MODEL}"}} 3.0
vllm:num_requests_running{{engine="1",model_name="{MODEL}"}} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{engine="0",model_name="{MODEL}"}} 0.0
vllm:num_requests_waiting{{engine="1",model_name="{MODEL}"}} 1.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{{engine="0",model_name="{MODEL}"}} 0.4213
vllm:kv_cache_usage_perc{{engine="1",model_name="{MODEL}"}} 0.6875
# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{{engine="0",model_name="{MODEL}"}} 182733.0
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{{engine="0",le="0.001",model_name="{MODEL}"}} 0.0
vllm:time_to_first_token_seconds_bucket{{engine="0",le="0.5",model_name="{MODEL}"}} 41.0
vllm:time_to_first_token_seconds_bucket{{engine="0",le="+Inf",model_name="{MODEL}"}} 52.0
vllm:time_to_first_token_seconds_count{{engine="0",model_name="{MODEL}"}} 52.0
vllm:time_to_first_token_seconds_sum{{engine="0",model_name="{MODEL}"}} 19.73
"""

VLLM_LEGACY_METRICS = f"""\
# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{{model_name="{MODEL}"}} 0.915
# HELP vllm:num_preemptions_total Cumulative number of preemption from the engine.
# TYPE vllm:num_preemptions_total counter
vllm:num_preemptions_total{{model_name="{MODEL}"}} 7.0
"""

SGLANG_METRICS = """\
# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="deepseek-ai/DeepSeek-R1",tp_rank="0"} 8.0
# HELP sglang:token_usage The token usage.
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="deepseek-ai/DeepSeek-R1",tp_rank="0"} 0.28
# HELP sglang:gen_throughput The generation throughput (token/s).
# TYPE sglang:gen_throughput gauge
sglang:gen_throughput{model_name="deepseek-ai/DeepSeek-R1",tp_rank="0"} 512.7
# HELP sglang:cache_hit_rate The prefix cache hit rate.
# TYPE sglang:cache_hit_rate gauge
sglang:cache_hit_rate{model_name="deepseek-ai/DeepSeek-R1",tp_rank="0"} 0.61
"""

LLAMACPP_METRICS = """\
# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 6886
# HELP llamacpp:prompt_seconds_total Prompt process time
# TYPE llamacpp:prompt_seconds_total counter
llamacpp:prompt_seconds_total 2903.63
# HELP llamacpp:tokens_predicted_total Number of generation tokens processed.
# TYPE llamacpp:tokens_predicted_total counter
llamacpp:tokens_predicted_total 3469
# HELP llamacpp:n_decode_total Total number of llama_decode() calls
# TYPE llamacpp:n_decode_total counter
llamacpp:n_decode_total 3470
# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 1
# HELP llamacpp:requests_deferred Number of requests deferred.
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 0
"""

LLAMACPP_LEGACY_METRICS = (
    LLAMACPP_METRICS
    + """\
# HELP llamacpp:kv_cache_usage_ratio KV-cache usage. 1 means 100 percent usage.
# TYPE llamacpp:kv_cache_usage_ratio gauge
llamacpp:kv_cache_usage_ratio 0.125
# HELP llamacpp:kv_cache_tokens KV-cache tokens.
# TYPE llamacpp:kv_cache_tokens gauge
llamacpp:kv_cache_tokens 512
"""
)

_DCGM_LABELS = (
    'gpu="{gpu}",UUID="GPU-265c9814-6156-355b-e589-ff2064894f1{gpu}",pci_bus_id="00000000:0{gpu}:00.0",'
    'device="nvidia{gpu}",modelName="NVIDIA H100 80GB HBM3",Hostname="gpu-node-1",DCGM_FI_DRIVER_VERSION="550.54.15"'
)


def dcgm_metrics(gpus: list[tuple[int, int, int]], reserved: bool = True) -> str:
    """A DCGM exporter page for GPUs given as (used, free, reserved) MiB."""
    lines = []
    for field, index, help_text in (
        ("DCGM_FI_DEV_FB_FREE", 1, "Framebuffer memory free (in MiB)."),
        ("DCGM_FI_DEV_FB_USED", 0, "Framebuffer memory used (in MiB)."),
        ("DCGM_FI_DEV_FB_RESERVED", 2, "Framebuffer memory reserved (in MiB)."),
    ):
        if field == "DCGM_FI_DEV_FB_RESERVED" and not reserved:
            continue
        lines.append(f"# HELP {field} {help_text}")
        lines.append(f"# TYPE {field} gauge")
        for gpu, values in enumerate(gpus):
            lines.append(f"{field}{{{_DCGM_LABELS.format(gpu=gpu)}}} {values[index]}")
    lines.append("# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).")
    lines.append("# TYPE DCGM_FI_DEV_GPU_UTIL gauge")
    lines += [f"DCGM_FI_DEV_GPU_UTIL{{{_DCGM_LABELS.format(gpu=gpu)}}} 97" for gpu in range(len(gpus))]
    return "\n".join(lines) + "\n"


def ollama_ps(*models: tuple[str, int, int]) -> bytes:
    """`GET /api/ps` for loaded models given as (name, size, size_vram) bytes."""
    return orjson.dumps(
        {
            "models": [
                {
                    "name": name,
                    "model": name,
                    "size": size,
                    "digest": "c333b7232bdb521236694ffbb5f5a6b11cc45d98e9142c73123b670fca400b09",
                    "details": {
                        "parent_model": "",
                        "format": "gguf",
                        "family": "qwen2",
                        "families": ["qwen2"],
                        "parameter_size": "14.8B",
                        "quantization_level": "Q4_K_M",
                    },
                    "expires_at": "2025-06-12T11:38:52.264187Z",
                    "size_vram": size_vram,
                    "context_length": 4096,
                }
                for name, size, size_vram in models
            ]
        }
    )

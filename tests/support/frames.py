"""Response bodies shaped like the real servers', frame by frame, for scripting the upstream."""

from __future__ import annotations

from typing import Any

import orjson

from sentinel.demo.upstream import SSE_DONE, SSE_KEEPALIVE, ndjson, sse

SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
NDJSON_HEADERS = {"Content-Type": "application/x-ndjson"}
JSON_HEADERS = {"Content-Type": "application/json"}


def vllm_chat_stream(
    reasoning: list[str],
    answer: list[str],
    *,
    model: str = "deepseek-r1",
    reasoning_field: str = "reasoning_content",
    include_usage: bool = True,
    keepalive: bool = True,
    usage: tuple[int, int] = (12, 34),
    reasoning_tokens: int | None = None,
) -> list[bytes]:
    """A streamed chat completion as vLLM/SGLang serve DeepSeek-R1: role chunk, reasoning deltas,
    a keep-alive comment, content deltas, finish chunk, optional usage chunk, [DONE]."""
    base = {"id": "chatcmpl-123", "object": "chat.completion.chunk", "created": 1730000000, "model": model}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return sse({**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})

    frames = [chunk({"role": "assistant", "content": ""})]
    frames += [chunk({reasoning_field: piece}) for piece in reasoning]
    if keepalive:
        frames.append(SSE_KEEPALIVE)
    frames += [chunk({"content": piece}) for piece in answer]
    frames.append(chunk({}, "stop"))
    if include_usage:
        details = {"reasoning_tokens": reasoning_tokens} if reasoning_tokens is not None else None
        body: dict[str, Any] = {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}
        if details:
            body["completion_tokens_details"] = details
        frames.append(sse({**base, "choices": [], "usage": body}))
    frames.append(SSE_DONE)
    return frames


def chat_completion(
    content: str,
    *,
    reasoning: str | None = None,
    model: str = "deepseek-r1",
    usage: tuple[int, int] = (9, 7),
    reasoning_field: str = "reasoning_content",
) -> bytes:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if reasoning is not None:
        message[reasoning_field] = reasoning
    return orjson.dumps(
        {
            "id": "chatcmpl-9",
            "object": "chat.completion",
            "created": 1730000000,
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)},
        }
    )


def ollama_chat_stream(
    thinking: list[str], answer: list[str], *, model: str = "deepseek-r1:7b", counts: tuple[int, int] = (21, 13)
) -> list[bytes]:
    lines = [
        ndjson(
            {
                "model": model,
                "created_at": "2025-01-01T00:00:00Z",
                "message": {"role": "assistant", "content": "", "thinking": t},
                "done": False,
            }
        )
        for t in thinking
    ]
    lines += [
        ndjson(
            {
                "model": model,
                "created_at": "2025-01-01T00:00:00Z",
                "message": {"role": "assistant", "content": a},
                "done": False,
            }
        )
        for a in answer
    ]
    lines.append(
        ndjson(
            {
                "model": model,
                "created_at": "2025-01-01T00:00:01Z",
                "message": {"role": "assistant", "content": ""},
                "done": True,
                "done_reason": "stop",
                "total_duration": 5_000_000,
                "load_duration": 1_000,
                "prompt_eval_count": counts[0],
                "prompt_eval_duration": 1_000,
                "eval_count": counts[1],
                "eval_duration": 4_000_000,
            }
        )
    )
    return lines

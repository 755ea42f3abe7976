"""Reading Ollama's native API: `/api/chat`, `/api/generate`, `/api/embed`.

Streams are NDJSON, one object per line; the last has `done: true`, `done_reason`,
`prompt_eval_count`, `eval_count` and durations in nanoseconds. Reasoning is `thinking`
(`message.thinking` on chat). Streaming is the default unless the body says `"stream": false`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from sentinel.capture.facts import RequestFacts, ResponseFacts, as_int
from sentinel.interaction import Operation

_OPTION_KEYS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "num_predict": "max_tokens",
    "seed": "seed",
    "stop": "stop",
    "repeat_penalty": "repetition_penalty",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "num_ctx": "num_ctx",
}


def parse_request(body: dict[str, Any], operation: Operation) -> RequestFacts:
    facts = RequestFacts(json_valid=True)
    model = body.get("model")
    facts.model = model if isinstance(model, str) else None
    if operation is Operation.EMBEDDINGS:
        facts.stream = False
        facts.messages = body.get("input", body.get("prompt"))
    else:
        facts.stream = body.get("stream", True) is not False
        facts.messages = body.get("messages") if operation is Operation.CHAT else body.get("prompt")
    options = body.get("options")
    if isinstance(options, dict):
        facts.sampling = {ours: options[theirs] for theirs, ours in _OPTION_KEYS.items() if theirs in options}
    for key in ("think", "format", "keep_alive"):
        if key in body:
            facts.sampling[key] = body[key]
    if operation is Operation.TEXT_COMPLETION and isinstance(body.get("system"), str):
        facts.messages = {"system": body["system"], "prompt": facts.messages}
    return facts


def _apply(facts: ResponseFacts, obj: dict[str, Any], chunk: int, operation: Operation) -> None:
    facts.events += 1
    error = obj.get("error")
    if error is not None:
        facts.error_message = str(error)
        return
    model = obj.get("model")
    if isinstance(model, str):
        facts.model = model
    if operation is Operation.CHAT:
        message = obj.get("message")
        if isinstance(message, dict):
            facts.add_text(0, message.get("content"), chunk)
            facts.add_reasoning(0, message.get("thinking"), chunk)
            facts.add_tool_calls(0, message.get("tool_calls"), chunk)
    elif operation is Operation.TEXT_COMPLETION:
        facts.add_text(0, obj.get("response"), chunk)
        facts.add_reasoning(0, obj.get("thinking"), chunk)
    if operation is Operation.EMBEDDINGS:
        tokens = as_int(obj.get("prompt_eval_count"))
        if tokens is not None:
            facts.usage.input_tokens = facts.usage.total_tokens = tokens
            facts.usage.source = "ollama"
        return
    if obj.get("done") is True:
        facts.done = True
        reason = obj.get("done_reason")
        facts.finish_reason = reason if isinstance(reason, str) else facts.finish_reason
        inp, out = as_int(obj.get("prompt_eval_count")), as_int(obj.get("eval_count"))
        if inp is not None or out is not None:
            facts.usage.input_tokens, facts.usage.output_tokens = inp, out
            facts.usage.total_tokens = (inp or 0) + (out or 0)
            facts.usage.source = "ollama"


def parse_body(body: bytes, operation: Operation) -> ResponseFacts:
    facts = ResponseFacts()
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return parse_ndjson([body], operation)
    if isinstance(obj, dict):
        _apply(facts, obj, 0, operation)
    return facts


def parse_ndjson(chunks: Iterable[bytes], operation: Operation) -> ResponseFacts:
    facts = ResponseFacts()
    pending = b""
    index = 0
    for index, chunk in enumerate(chunks):
        pending += chunk
        if b"\n" not in chunk:
            continue
        lines = pending.split(b"\n")
        pending = lines.pop()
        for line in lines:
            _line(facts, line, index, operation)
    if pending.strip():
        _line(facts, pending, index, operation)
    return facts


def _line(facts: ResponseFacts, line: bytes, chunk: int, operation: Operation) -> None:
    line = line.strip()
    if not line:
        return
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return
    if isinstance(obj, dict):
        _apply(facts, obj, chunk, operation)

"""Reading OpenAI-compatible requests and responses (vLLM, SGLang, llama.cpp, DeepSeek API, Ollama `/v1`).

Streams are Server-Sent Events: `data: {json}` frames separated by blank lines, `: comment`
keep-alives, a final `data: [DONE]`, and with `stream_options.include_usage` one chunk with
`"choices": []` and `usage` before it. Reasoning arrives as `delta.reasoning_content`
(DeepSeek, SGLang) or `delta.reasoning` (current vLLM, Ollama `/v1`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import accumulate
from typing import Any

import orjson

from sentinel.capture.facts import RequestFacts, ResponseFacts, as_int
from sentinel.interaction import Operation

SAMPLING_KEYS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "max_tokens",
    "max_completion_tokens",
    "frequency_penalty",
    "presence_penalty",
    "repetition_penalty",
    "seed",
    "stop",
    "n",
    "logprobs",
    "response_format",
    "reasoning_effort",
)
_CONTENT_KEY = {Operation.CHAT: "messages", Operation.TEXT_COMPLETION: "prompt", Operation.EMBEDDINGS: "input"}


def parse_request(body: dict[str, Any], operation: Operation) -> RequestFacts:
    facts = RequestFacts(json_valid=True)
    model = body.get("model")
    facts.model = model if isinstance(model, str) else None
    facts.stream = body.get("stream") is True
    facts.sampling = {key: body[key] for key in SAMPLING_KEYS if key in body}
    if "max_tokens" not in facts.sampling and "max_completion_tokens" in facts.sampling:
        facts.sampling["max_tokens"] = facts.sampling["max_completion_tokens"]
    if body.get("tools"):
        facts.sampling["tools"] = len(body["tools"]) if isinstance(body["tools"], list) else True
    key = _CONTENT_KEY.get(operation)
    if key is not None:
        facts.messages = body.get(key)
    user = body.get("user")
    facts.user = user if isinstance(user, str) else None
    return facts


def _usage(facts: ResponseFacts, usage: Any) -> None:
    if not isinstance(usage, dict):
        return
    facts.usage.input_tokens = as_int(usage.get("prompt_tokens"))
    facts.usage.output_tokens = as_int(usage.get("completion_tokens"))
    facts.usage.total_tokens = as_int(usage.get("total_tokens"))
    details = usage.get("completion_tokens_details")
    if isinstance(details, dict):
        facts.usage.reasoning_tokens = as_int(details.get("reasoning_tokens"))
    facts.usage.source = "usage"


def _error(facts: ResponseFacts, obj: dict[str, Any]) -> bool:
    """Record an error object (`{"error": ...}` or vLLM's `{"object": "error", ...}`); True if it was one."""
    error = obj.get("error")
    if error is not None:
        if isinstance(error, dict):
            facts.error_message = str(error.get("message") or error)
        else:
            facts.error_message = str(error)
        return True
    if obj.get("object") == "error":
        facts.error_message = str(obj.get("message") or "error")
        return True
    return False


def _apply(facts: ResponseFacts, obj: dict[str, Any], chunk: int, streamed: bool) -> None:
    # Runs once per streamed event (54 times for a short answer), so the `ResponseFacts` helpers for
    # text and reasoning are inlined here; the semantics are theirs.
    facts.events += 1
    if obj.get("error") is not None or obj.get("object") == "error":
        _error(facts, obj)
        return
    model = obj.get("model")
    if isinstance(model, str):
        facts.model = model
    usage = obj.get("usage")
    if usage:
        _usage(facts, usage)
    choices = obj.get("choices")
    if not isinstance(choices, list):
        return
    key = "delta" if streamed else "message"
    for position, choice in enumerate(choices):
        if not isinstance(choice, dict):
            continue
        index = choice.get("index", position)
        if not isinstance(index, int):
            index = position
        message = choice.get(key)
        if isinstance(message, dict):
            text = message.get("content")
            if text and isinstance(text, str):
                facts.texts.setdefault(index, []).append(text)
                if facts.first_token_chunk is None:
                    facts.first_token_chunk = chunk
            reasoning = message.get("reasoning_content")
            if reasoning is None:
                reasoning = message.get("reasoning")
            if reasoning and isinstance(reasoning, str):
                facts.reasoning.setdefault(index, []).append(reasoning)
                if facts.first_token_chunk is None:
                    facts.first_token_chunk = chunk
            calls = message.get("tool_calls")
            if calls:
                if streamed:
                    facts.merge_tool_calls(index, calls, chunk)
                else:
                    facts.add_tool_calls(index, calls, chunk)
        else:
            facts.add_text(index, choice.get("text"), chunk)
        reason = choice.get("finish_reason")
        if reason and index == 0:
            facts.finish_reason = reason


def parse_body(body: bytes, operation: Operation) -> ResponseFacts:
    """A whole (non-streamed) JSON response, or a JSON error body."""
    facts = ResponseFacts()
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return facts
    if not isinstance(obj, dict):
        return facts
    if operation is Operation.EMBEDDINGS:
        facts.events = 1
        if not _error(facts, obj):
            if isinstance(obj.get("model"), str):
                facts.model = obj["model"]
            usage = obj.get("usage")
            if isinstance(usage, dict):
                facts.usage.input_tokens = as_int(usage.get("prompt_tokens"))
                facts.usage.total_tokens = as_int(usage.get("total_tokens"))
                facts.usage.source = "usage"
        return facts
    _apply(facts, obj, 0, streamed=False)
    return facts


def parse_sse(chunks: Sequence[bytes]) -> ResponseFacts:
    """Replay a captured SSE stream, noting which chunk carried the first token.

    Events are found in the joined chunks by splitting at blank lines (`\\n\\n`) in one pass; an
    event that is one `data:` line (what servers send) skips the line-by-line reading. An event
    belongs to the chunk that held the end of the blank line closing it, found from byte offsets:
    the same answer as replaying the stream chunk by chunk, for less work (docs/benchmarks.md).
    """
    facts = ResponseFacts()
    if not chunks:
        return facts
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    ends = list(accumulate(map(len, chunks)))
    current = 0  # the chunk holding the byte last looked at; offsets only grow

    def chunk_at(offset: int) -> int:
        nonlocal current
        while ends[current] <= offset:
            current += 1
        return current

    loads, decode_error = orjson.loads, orjson.JSONDecodeError
    data: list[bytes] = []
    event = b""
    blocks = body.split(b"\n\n")
    pending = blocks.pop()
    cr = b"\r" in body
    offset = 0
    for block in blocks:
        end = offset + len(block)
        offset = end + 2
        if block.startswith(b"data:") and b"\n" not in block and not (cr and block.endswith(b"\r")):
            # One data line, then the blank line: `data` is empty and `event` unset, as the blank
            # line before this block left them.
            value = block[6:] if block.startswith(b"data: ") else block[5:]
            while ends[current] <= end + 1:
                current += 1
            if value == b"[DONE]":
                facts.done = True
                continue
            try:
                obj = loads(value)
            except decode_error:
                continue
            if isinstance(obj, dict):
                _apply(facts, obj, current, True)
            continue
        event = _read_lines(facts, block.split(b"\n"), end - len(block), data, event, chunk_at)
        if data:
            _dispatch(facts, b"\n".join(data), event, chunk_at(end + 1))
            data.clear()
        event = b""
    lines = pending.split(b"\n")
    pending = lines.pop()
    event = _read_lines(facts, lines, offset, data, event, chunk_at)
    if pending.startswith(b"data:"):
        value = pending[5:]
        data.append(value[1:] if value.startswith(b" ") else value)
    if data:
        _dispatch(facts, b"\n".join(data), event, len(chunks) - 1)
    return facts


def _read_lines(
    facts: ResponseFacts,
    lines: list[bytes],
    offset: int,
    data: list[bytes],
    event: bytes,
    chunk_at: Callable[[int], int],
) -> bytes:
    """SSE lines one by one (each ended by `\\n` at `offset + len(line)`); returns the `event:` in force."""
    for line in lines:
        end = offset + len(line)
        offset = end + 1
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            if data:
                _dispatch(facts, b"\n".join(data), event, chunk_at(end))
                data.clear()
            event = b""
        elif line.startswith(b"data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(b" ") else value)
        elif line.startswith(b"event:"):
            event = line[6:].strip()
    return event


def _dispatch(facts: ResponseFacts, data: bytes, event: bytes, chunk: int) -> None:
    if data == b"[DONE]":
        facts.done = True
        return
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        if event == b"error":
            facts.error_message = data.decode("utf-8", "replace")
        return
    if isinstance(obj, dict):
        if event == b"error" and "error" not in obj:
            obj = {"error": obj}
        _apply(facts, obj, chunk, streamed=True)

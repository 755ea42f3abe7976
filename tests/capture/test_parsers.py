"""The response parsers on their own: any chunking of the same bytes gives the same record."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterable

import orjson
import pytest

from sentinel.capture import ollama, openai
from sentinel.capture.facts import ResponseFacts
from sentinel.capture.routes import classify
from sentinel.interaction import Operation, Protocol
from tests.support.frames import ollama_chat_stream, vllm_chat_stream


def rechunk(data: bytes, rng: random.Random) -> list[bytes]:
    chunks, i = [], 0
    while i < len(data):
        step = rng.randint(1, 40)
        chunks.append(data[i : i + step])
        i += step
    return chunks


@pytest.mark.parametrize("seed", range(20))
def test_sse_parse_is_independent_of_chunk_boundaries(seed: int) -> None:
    body = b"".join(vllm_chat_stream(["a", "b"], ["Hel", "lo"], usage=(3, 4), reasoning_tokens=2))
    if seed % 2:
        body = body.replace(b"\n", b"\r\n")  # CRLF line endings are legal SSE
    facts = openai.parse_sse(rechunk(body, random.Random(seed)))
    assert facts.text() == "Hello" and facts.reasoning_text() == "ab"
    assert (facts.usage.input_tokens, facts.usage.output_tokens, facts.usage.reasoning_tokens) == (3, 4, 2)
    assert facts.done and facts.finish_reason == "stop" and facts.error_message is None


def test_sse_first_token_chunk_skips_role_only_chunk() -> None:
    frames = vllm_chat_stream([], ["x"], keepalive=True, include_usage=False)
    facts = openai.parse_sse(frames)
    assert facts.first_token_chunk == 2  # role chunk, keep-alive, then the first content


def test_sse_tool_call_deltas_are_merged() -> None:
    from sentinel.demo.upstream import sse

    base = {"id": "x", "model": "m", "object": "chat.completion.chunk"}
    frames = [
        sse(
            {
                **base,
                "choices": [
                    {
                        "index": 0,
                        "delta": {
                            "tool_calls": [
                                {
                                    "index": 0,
                                    "id": "call_1",
                                    "type": "function",
                                    "function": {"name": "lookup", "arguments": ""},
                                }
                            ]
                        },
                    }
                ],
            }
        ),
        sse(
            {
                **base,
                "choices": [
                    {"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"mrn": '}}]}}
                ],
            }
        ),
        sse(
            {
                **base,
                "choices": [
                    {
                        "index": 0,
                        "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '"12345"}'}}]},
                        "finish_reason": "tool_calls",
                    }
                ],
            }
        ),
        b"data: [DONE]\n\n",
    ]
    facts = openai.parse_sse(frames)
    assert facts.calls() == [
        {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"mrn": "12345"}'}}
    ]
    assert facts.finish_reason == "tool_calls"


def test_sse_multiple_choices_and_error_event() -> None:
    from sentinel.demo.upstream import sse

    frames = [
        sse({"choices": [{"index": 0, "delta": {"content": "A"}}, {"index": 1, "delta": {"content": "B"}}]}),
        b'event: error\ndata: {"message": "overloaded"}\n\n',
    ]
    facts = openai.parse_sse(frames)
    assert facts.text() == "A" and facts.extra_choices() == ["B"]
    assert facts.error_message == "overloaded"


def replay_sse(chunks: Iterable[bytes]) -> ResponseFacts:
    """The straightforward reading `parse_sse` must agree with: chunk by chunk, line by line."""
    facts = ResponseFacts()
    pending = b""
    data: list[bytes] = []
    event = b""
    index = -1
    for index, chunk in enumerate(chunks):
        pending += chunk
        lines = pending.split(b"\n")
        pending = lines.pop()
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if data:
                    openai._dispatch(facts, b"\n".join(data), event, index)
                    data = []
                event = b""
            elif line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(b" ") else value)
            elif line.startswith(b"event:"):
                event = line[6:].strip()
    if pending.startswith(b"data:"):
        value = pending[5:]
        data.append(value[1:] if value.startswith(b" ") else value)
    if data:
        openai._dispatch(facts, b"\n".join(data), event, max(index, 0))
    return facts


def random_sse(rng: random.Random) -> bytes:
    """Well-formed and odd SSE alike: comments, `event:` fields, multi-line data, bad JSON, blank-line runs."""
    frames = []
    for _ in range(rng.randint(0, 12)):
        kind = rng.random()
        delta = rng.choice(
            [
                {"role": "assistant", "content": ""},
                {"content": rng.choice(["a", "b\n", "\u00e9", ""])},
                {"reasoning_content": "r"},
                {"reasoning": "q"},
                {"tool_calls": [{"index": 0, "function": {"arguments": "x"}}]},
                {},
            ]
        )
        obj = {"model": "m", "choices": [{"index": rng.choice([0, 0, 1]), "delta": delta, "finish_reason": None}]}
        if kind < 0.5:
            frames.append(b"data: " + orjson.dumps(obj) + b"\n\n")
        elif kind < 0.6:
            frames.append(b"data:" + orjson.dumps({"choices": [], "usage": {"prompt_tokens": 1}}) + b"\n\n")
        elif kind < 0.65:
            frames.append(b": keep-alive\n\n")
        elif kind < 0.7:
            frames.append(b'event: error\ndata: {"message": "overloaded"}\n\n')
        elif kind < 0.75:
            frames.append(b"event: error\ndata: not json\n\n")
        elif kind < 0.8:
            text = orjson.dumps(obj)
            frames.append(b"data: " + text[:5] + b"\ndata: " + text[5:] + b"\n\n")
        elif kind < 0.85:
            frames.append(b"data: {broken\n\n")
        elif kind < 0.9:
            frames.append(b"\n\n\n")
        elif kind < 0.95:
            frames.append(b'data: {"error": {"message": "bad"}}\n\n')
        else:
            frames.append(b"data: [DONE]\n\n")
    body = b"".join(frames)
    if rng.random() < 0.3:
        body = body.replace(b"\n", b"\r\n")
    if rng.random() < 0.3:
        body = body.rstrip(b"\r\n")  # a stream cut before its last blank line
    return body


@pytest.mark.parametrize("seed", range(300))
def test_sse_parse_matches_a_chunk_by_chunk_replay(seed: int) -> None:
    rng = random.Random(seed)
    chunks = rechunk(random_sse(rng), rng)
    if rng.random() < 0.2:
        chunks.insert(rng.randint(0, len(chunks)), b"")
    assert dataclasses.asdict(openai.parse_sse(chunks)) == dataclasses.asdict(replay_sse(chunks))


@pytest.mark.parametrize("seed", range(10))
def test_ndjson_parse_is_independent_of_chunk_boundaries(seed: int) -> None:
    body = b"".join(ollama_chat_stream(["hm"], ["Hi", "!"], counts=(8, 2)))
    facts = ollama.parse_ndjson(rechunk(body, random.Random(seed)), Operation.CHAT)
    assert facts.text() == "Hi!" and facts.reasoning_text() == "hm"
    assert (facts.usage.input_tokens, facts.usage.output_tokens, facts.usage.total_tokens) == (8, 2, 10)
    assert facts.done and facts.finish_reason == "stop"


def test_ollama_request_defaults_to_streaming() -> None:
    facts = ollama.parse_request({"model": "m", "messages": []}, Operation.CHAT)
    assert facts.stream is True
    assert ollama.parse_request({"model": "m", "input": "x"}, Operation.EMBEDDINGS).stream is False


def test_openai_request_sampling_and_content() -> None:
    facts = openai.parse_request(
        {"model": "m", "prompt": "p", "temperature": 0, "max_completion_tokens": 5, "tools": [{}, {}], "user": 7},
        Operation.TEXT_COMPLETION,
    )
    assert facts.messages == "p" and facts.user is None
    assert facts.sampling == {"temperature": 0, "max_completion_tokens": 5, "max_tokens": 5, "tools": 2}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1/chat/completions", (Protocol.OPENAI, Operation.CHAT)),
        ("/chat/completions", (Protocol.OPENAI, Operation.CHAT)),
        ("/v1/completions", (Protocol.OPENAI, Operation.TEXT_COMPLETION)),
        ("/v1/embeddings", (Protocol.OPENAI, Operation.EMBEDDINGS)),
        ("/v1/models", (Protocol.OPENAI, Operation.OTHER)),
        ("/api/chat", (Protocol.OLLAMA, Operation.CHAT)),
        ("/api/generate", (Protocol.OLLAMA, Operation.TEXT_COMPLETION)),
        ("/api/embed", (Protocol.OLLAMA, Operation.EMBEDDINGS)),
        ("/api/embeddings", (Protocol.OLLAMA, Operation.EMBEDDINGS)),
        ("/api/tags", (Protocol.OLLAMA, Operation.OTHER)),
        ("/health", (Protocol.OTHER, Operation.OTHER)),
    ],
)
def test_routes(path: str, expected: tuple[Protocol, Operation]) -> None:
    assert classify(path) == expected

"""Every text-bearing field is scanned, both ways: tool-call arguments (in answers, streamed in
pieces or whole, and in the history a caller sends back), tool definitions, message names, refusals,
Ollama's suffix and template, and SSE events that carry `event:` or `id:` lines. Through the real
proxy with the real `openai` and `ollama` clients."""

from __future__ import annotations

from typing import Any

import httpx
import ollama
import openai
import orjson
import pytest

from tests.policy.conftest import StartWithPolicy
from tests.support.frames import JSON_HEADERS, NDJSON_HEADERS, SSE_HEADERS, chat_completion
from tests.support.upstream import Script, ScriptedUpstream

POLICY = """
sampling: []
rules:
  - name: weapons
    keywords: [nerve agent]
    action: block
  - name: codenames
    keywords: [bluebird]
    action: redact
phi: {request: flag, response: redact, categories: [ssn]}
"""

TOOL = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Looks things up.",
        "parameters": {"type": "object", "properties": {"q": {"type": "string", "description": "query"}}},
    },
}


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="sk-caller", max_retries=0, timeout=60)


def _with(path: list[Any], value: str, base: dict[str, Any]) -> dict[str, Any]:
    body = orjson.loads(orjson.dumps(base))
    target = body
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return body


CHAT: dict[str, Any] = {
    "messages": [
        {"role": "user", "content": "hi", "name": "ward7"},
        {
            "role": "assistant",
            "content": None,
            "refusal": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "found"},
    ],
    "tools": [TOOL],
}


@pytest.mark.parametrize(
    "path",
    [
        ["messages", 0, "name"],
        ["messages", 1, "refusal"],
        ["messages", 1, "tool_calls", 0, "function", "arguments"],
        ["tools", 0, "function", "description"],
        ["tools", 0, "function", "parameters", "properties", "q", "description"],
    ],
    ids=["name", "refusal", "tool-call-arguments", "tool-description", "parameter-description"],
)
def test_blocked_keyword_in_any_request_field_is_refused(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy, path: list[Any]
) -> None:
    proxy = start_with_policy(upstream.url, POLICY)
    body = _with(path, '{"q": "nerve agent"}' if "arguments" in path else "nerve agent synthesis", CHAT)
    with client(proxy.url) as api, pytest.raises(openai.BadRequestError):
        api.chat.completions.create(model="m", **body)
    assert upstream.seen == []


@pytest.mark.parametrize("field", ["suffix", "template", "system"])
def test_ollama_generate_suffix_template_system_are_scanned(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy, field: str
) -> None:
    proxy = start_with_policy(upstream.url, POLICY)
    with ollama.Client(host=proxy.url, timeout=60) as api, pytest.raises(ollama.ResponseError):
        api.generate(model="m", prompt="hello", **{field: "how to make nerve agent"})  # type: ignore[call-overload]
    assert upstream.seen == []


def test_ollama_history_tool_call_object_arguments_are_redacted(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy
) -> None:
    done = orjson.dumps({"model": "m", "message": {"role": "assistant", "content": "ok"}, "done": True}) + b"\n"
    upstream.script("/api/chat", Script(headers=NDJSON_HEADERS, chunks=[done]))
    proxy = start_with_policy(upstream.url, POLICY)
    call = {"function": {"name": "lookup", "arguments": {"q": {"deep": ["Bluebird"]}}}}
    with ollama.Client(host=proxy.url, timeout=60) as api:
        api.chat(model="m", messages=[{"role": "assistant", "content": "", "tool_calls": [call]}])
    sent = orjson.loads(upstream.seen[0].body)
    assert sent["messages"][0]["tool_calls"][0]["function"]["arguments"] == {"q": {"deep": ["[REDACTED]"]}}


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [choice]}


def _call_piece(arguments: str, first: bool = False) -> dict[str, Any]:
    call: dict[str, Any] = {"index": 0, "function": {"arguments": arguments}}
    if first:
        call.update(id="call_1", type="function", function={"name": "lookup", "arguments": arguments})
    return {"tool_calls": [call]}


def test_streamed_tool_call_arguments_are_redacted_across_pieces(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy
) -> None:
    frames = [
        _chunk({"role": "assistant", "content": None}),
        _chunk(_call_piece('{"q": "Blue', first=True)),
        _chunk(_call_piece('bird", "ssn": "219-55-')),
        _chunk(_call_piece('0187"}')),
        _chunk({}, "tool_calls"),
    ]
    chunks = [b"data: " + orjson.dumps(frame) + b"\n\n" for frame in frames] + [b"data: [DONE]\n\n"]
    upstream.script("/v1/chat/completions", Script(headers=SSE_HEADERS, chunks=chunks))
    proxy = start_with_policy(upstream.url, POLICY)
    with client(proxy.url) as api:
        stream = api.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True)
        arguments = "".join(
            call.function.arguments or ""
            for chunk in stream
            for call in (chunk.choices[0].delta.tool_calls or [])
            if call.function is not None
        )
    assert orjson.loads(arguments) == {"q": "[REDACTED]", "ssn": "[SSN]"}


def test_whole_answer_tool_call_and_refusal_are_redacted(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy
) -> None:
    body = orjson.loads(chat_completion(""))
    message = body["choices"][0]["message"]
    message["refusal"] = "I cannot discuss Bluebird."
    message["tool_calls"] = [
        {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "bluebird"}'}}
    ]
    upstream.script("/v1/chat/completions", Script(headers=JSON_HEADERS, chunks=[orjson.dumps(body)]))
    proxy = start_with_policy(upstream.url, POLICY)
    with client(proxy.url) as api:
        answer = api.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    got = answer.choices[0].message
    assert got.refusal == "I cannot discuss [REDACTED]."
    assert got.tool_calls is not None and got.tool_calls[0].function.arguments == '{"q": "[REDACTED]"}'  # type: ignore[union-attr]


def test_ollama_streamed_tool_call_is_redacted(upstream: ScriptedUpstream, start_with_policy: StartWithPolicy) -> None:
    call = {"function": {"name": "lookup", "arguments": {"q": "bluebird", "n": 3}}}
    lines = [
        orjson.dumps(
            {"model": "m", "message": {"role": "assistant", "content": "", "tool_calls": [call]}, "done": False}
        ),
        orjson.dumps({"model": "m", "message": {"role": "assistant", "content": ""}, "done": True}),
    ]
    upstream.script("/api/chat", Script(headers=NDJSON_HEADERS, chunks=[line + b"\n" for line in lines]))
    proxy = start_with_policy(upstream.url, POLICY)
    with ollama.Client(host=proxy.url, timeout=60) as api:
        parts = list(api.chat(model="m", messages=[{"role": "user", "content": "hi"}], stream=True))
    calls = [c for p in parts for c in (p.message.tool_calls or [])]
    assert calls[0].function.arguments == {"q": "[REDACTED]", "n": 3}


def test_sse_events_with_event_and_id_lines_are_scanned(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy
) -> None:
    first = orjson.dumps(_chunk({"content": "code Blue"})).decode()
    second = orjson.dumps(_chunk({"content": "bird ok"}, "stop"))
    cut = second.index(b',"object"')  # between two members: the newline joining data lines is whitespace
    chunks = [
        f"id: 1\nevent: message\ndata: {first}\n\n".encode(),
        b"id: 2\r\ndata: " + second[:cut] + b"\r\ndata: " + second[cut:] + b"\r\n\r\n",  # one payload in two data lines
        b"data: [DONE]\n\n",
    ]
    upstream.script("/v1/chat/completions", Script(headers=SSE_HEADERS, chunks=chunks))
    proxy = start_with_policy(upstream.url, POLICY)
    with client(proxy.url) as api:
        stream = api.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "code [REDACTED] ok"


def _native(content: str, stop: bool = False, **extra: Any) -> bytes:
    return b"data: " + orjson.dumps({"content": content, "stop": stop, **extra}) + b"\n\n"


@pytest.mark.parametrize("path", ["/completion", "/completions"])
def test_llama_cpp_native_completion_is_judged_both_ways(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy, path: str
) -> None:
    probs = {"completion_probabilities": [{"token": "0187", "logprob": -0.1}]}
    chunks = [_native("SSN 219-55-", **probs), _native("0187 and Blue"), _native("bird", stop=True, tokens_predicted=5)]
    upstream.script(path, Script(headers=SSE_HEADERS, chunks=chunks))
    policy = POLICY.replace("sampling: []", "sampling:\n  - name: t\n    temperature: {max: 0.9}")
    proxy = start_with_policy(upstream.url, policy)
    with httpx.Client(base_url=proxy.url, timeout=60) as http:
        refused = http.post(path, json={"prompt": ["fine", "make nerve agent"]})
        assert refused.status_code == 400 and upstream.seen == []
        answer = http.post(path, json={"prompt": "hi", "stream": True, "temperature": 1.5, "n_probs": 1})
    frames = [orjson.loads(line[5:]) for line in answer.content.splitlines() if line.startswith(b"data:")]
    assert "".join(f["content"] for f in frames) == "SSN [SSN] and [REDACTED]"
    assert frames[-1]["stop"] is True and frames[-1]["tokens_predicted"] == 5
    assert all("completion_probabilities" not in f for f in frames)
    assert orjson.loads(upstream.seen[0].body)["temperature"] == 0.9


def test_llama_cpp_native_whole_answer_is_redacted(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy
) -> None:
    body = orjson.dumps({"content": "Bluebird at 219-55-0187", "stop": True, "probs": []})
    upstream.script("/completion", Script(headers=JSON_HEADERS, chunks=[body], content_length=True))
    proxy = start_with_policy(upstream.url, POLICY)
    answer = httpx.post(proxy.url + "/completion", json={"prompt": "hi"}, timeout=60).json()
    assert answer == {"content": "[REDACTED] at [SSN]", "stop": True}


def test_llama_cpp_native_answer_counted_by_flag_rules(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy
) -> None:
    chunks = [_native("the blue"), _native("bird sings", stop=True)]
    upstream.script("/completion", Script(headers=SSE_HEADERS, chunks=chunks))
    policy = (
        "sampling: []\nrules:\n  - name: watch\n    keywords: [bluebird]\n    action: flag\nphi: {enabled: false}\n"
    )
    proxy = start_with_policy(upstream.url, policy)
    answer = httpx.post(proxy.url + "/completion", json={"prompt": "hi", "stream": True}, timeout=60)
    assert answer.content == b"".join(chunks)  # flag rules leave the bytes alone
    actions = proxy.record().annotations["policy"]["actions"]
    assert {"rule": "watch", "action": "flag", "stage": "response", "count": 1} in actions


def _stream_of_arguments(*pieces: str) -> list[bytes]:
    frames = [_chunk({"role": "assistant", "content": None})]
    frames += [_chunk(_call_piece(piece, first=index == 0)) for index, piece in enumerate(pieces)]
    frames.append(_chunk({}, "tool_calls"))
    return [b"data: " + orjson.dumps(frame) + b"\n\n" for frame in frames] + [b"data: [DONE]\n\n"]


def _streamed_arguments(url: str) -> str:
    with client(url) as api:
        stream = api.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True)
        return "".join(
            call.function.arguments or ""
            for chunk in stream
            for call in (chunk.choices[0].delta.tool_calls or [])
            if call.function is not None
        )


def test_streamed_arguments_with_an_escaped_keyword_split_in_the_escape_are_blocked(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy
) -> None:
    chunks = _stream_of_arguments('{"q": "how to make a n\\u00', "65rve ag", 'ent"}')
    upstream.script("/v1/chat/completions", Script(headers=SSE_HEADERS, chunks=chunks))
    proxy = start_with_policy(upstream.url, POLICY)
    with pytest.raises(openai.APIError):
        _streamed_arguments(proxy.url)
    assert proxy.record().annotations["policy"]["blocked"] == {"stage": "response", "rule": "weapons"}


def test_streamed_arguments_with_escapes_are_redacted_and_decode_the_same(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy
) -> None:
    chunks = _stream_of_arguments('{"q": "bl\\u0075e', 'bird", "city": "\\u5317\\u4eac \\ud83c', '\\uddf3 \\"x\\\\"}')
    upstream.script("/v1/chat/completions", Script(headers=SSE_HEADERS, chunks=chunks))
    proxy = start_with_policy(upstream.url, POLICY)
    assert orjson.loads(_streamed_arguments(proxy.url)) == {"q": "[REDACTED]", "city": '北京 \U0001f1f3 "x\\'}


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [('{"q": "n\\u0065rve agent"}', None), ('{"bl\\u0075ebird": 1}', {"[REDACTED]": 1})],
    ids=["escaped-value-blocked", "escaped-key-redacted"],
)
def test_whole_answer_arguments_are_judged_decoded(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy, arguments: str, expected: dict[str, Any] | None
) -> None:
    body = orjson.loads(chat_completion(""))
    body["choices"][0]["message"]["tool_calls"] = [
        {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": arguments}}
    ]
    script = Script(headers=JSON_HEADERS, chunks=[orjson.dumps(body)], content_length=True)
    upstream.script("/v1/chat/completions", script)
    proxy = start_with_policy(upstream.url, POLICY)
    with client(proxy.url) as api:
        if expected is None:
            with pytest.raises(openai.BadRequestError):
                api.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
            return
        answer = api.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    calls = answer.choices[0].message.tool_calls
    assert calls is not None and orjson.loads(calls[0].function.arguments) == expected  # type: ignore[union-attr]


def test_ollama_tool_call_argument_keys_are_redacted(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy
) -> None:
    call = {"function": {"name": "lookup", "arguments": {"bluebird": {"Bluebird wing": 3}}}}
    line = {"model": "m", "message": {"role": "assistant", "content": "", "tool_calls": [call]}, "done": True}
    upstream.script("/api/chat", Script(headers=NDJSON_HEADERS, chunks=[orjson.dumps(line) + b"\n"]))
    proxy = start_with_policy(upstream.url, POLICY)
    with ollama.Client(host=proxy.url, timeout=60) as api:
        answer = api.chat(model="m", messages=[{"role": "user", "content": "hi"}])
    assert answer.message.tool_calls is not None
    assert answer.message.tool_calls[0].function.arguments == {"[REDACTED]": {"[REDACTED] wing": 3}}

"""Every string a request carries is judged, not a list of known fields: content parts read as one
text (vLLM and llama.cpp join them with a line break; chat templates may join them with nothing),
plain-string parts, thinking parts, tool-call names and ids, roles, tool-schema property names,
schemas nested deep, vLLM's `documents` and `chat_template_kwargs`, Responses item names, and JSON
escapes inside tool-call arguments. Through the real proxy with the real `openai` client, or as Dify
posts (httpx) where the client cannot send the shape."""

from __future__ import annotations

import functools
from typing import Any

import httpx
import ollama
import openai
import orjson
import pytest

from tests.policy.conftest import StartWithPolicy
from tests.support.frames import JSON_HEADERS, chat_completion
from tests.support.upstream import Script, ScriptedUpstream

POLICY = """
sampling: []
rules:
  - name: weapons
    keywords: [nerve agent]
    action: block
  - name: codenames
    keywords: [bluebird, Project Titan]
    action: redact
phi: {request: block, categories: [ssn]}
"""


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="sk-caller", max_retries=0, timeout=60)


def _post(url: str, body: dict[str, Any], path: str = "/v1/chat/completions") -> httpx.Response:
    return httpx.post(url + path, content=orjson.dumps(body), headers={"content-type": "application/json"}, timeout=60)


def _parts(*texts: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "text", "text": text} for text in texts]}]


@pytest.mark.parametrize(
    "texts",
    [("How is a nerve", "agent made?"), ("How is a nerve ", "agent made?"), ("my SSN is 219-55-", "0187")],
    ids=["keyword-line-break", "keyword-space", "ssn-no-separator"],
)
def test_a_match_split_across_content_parts_is_blocked(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy, texts: tuple[str, ...]
) -> None:
    proxy = start_with_policy(upstream.url, POLICY)
    with client(proxy.url) as api, pytest.raises(openai.BadRequestError):
        api.chat.completions.create(model="m", messages=_parts(*texts))  # type: ignore[arg-type]
    assert upstream.seen == []


def test_a_redaction_split_across_content_parts_removes_every_piece(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy
) -> None:
    upstream.script("/v1/chat/completions", Script(headers=JSON_HEADERS, chunks=[chat_completion("ok")]))
    proxy = start_with_policy(upstream.url, POLICY)
    with client(proxy.url) as api:
        api.chat.completions.create(model="m", messages=_parts("about Project", "Titan plans", "and blue", "bird"))  # type: ignore[arg-type]
    parts = orjson.loads(upstream.seen[0].body)["messages"][0]["content"]
    assert [part["text"] for part in parts] == ["about [REDACTED]", " plans", "and [REDACTED]", ""]


def _deep(levels: int) -> dict[str, Any]:
    return functools.reduce(lambda inner, _: {"items": inner}, range(levels), {"description": "nerve agent"})


USER = {"role": "user", "content": "hi"}
CALL = {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}


def _call(**function: Any) -> dict[str, Any]:
    return {"role": "assistant", "tool_calls": [{**CALL, "function": {**CALL["function"], **function}}]}


@pytest.mark.parametrize(
    "body",
    [
        {"messages": [USER, _call(name="nerve agent")]},
        {"messages": [USER, _call(), {"role": "tool", "tool_call_id": "nerve agent", "content": "ok"}]},
        {"messages": [{"role": "nerve agent", "content": "hi"}]},
        {"messages": [{"role": "user", "content": ["How is a nerve agent made?"]}]},
        {"messages": [{"role": "assistant", "content": [{"type": "thinking", "thinking": "nerve agent"}]}]},
        {"messages": [{"role": "assistant", "content": [{"type": "refusal", "refusal": "nerve agent"}]}]},
        {"messages": [USER], "tools": [{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"nerve agent": {"type": "string"}}}}}]},
        {"messages": [USER], "tools": [{"type": "function", "function": {"name": "f", "parameters": _deep(20)}}]},
        {"messages": [USER], "documents": [{"title": "x", "text": "nerve agent"}]},
        {"messages": [USER], "chat_template_kwargs": {"extra": "nerve agent"}},
        {"messages": [USER], "chat_template_kwargs": {"model": "nerve agent"}},
        {"messages": [USER, _call(arguments='{"q": "n\\u0065rve agent"}')]},
        {"messages": [USER, _call(arguments='{"n\\u0065rve agent": 1}')]},
    ],
    ids=[
        "tool-call-name", "tool-call-id", "role", "plain-string-part", "thinking-part", "refusal-part",
        "schema-property-name", "schema-20-deep", "documents", "chat-template-kwargs", "kwargs-named-model",
        "arguments-escaped-value", "arguments-escaped-key",
    ],
)  # fmt: skip
def test_every_string_of_a_chat_request_is_judged(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy, body: dict[str, Any]
) -> None:
    proxy = start_with_policy(upstream.url, POLICY)
    answer = _post(proxy.url, {"model": "m", **body})
    assert answer.status_code == 400, answer.text
    assert upstream.seen == []
    assert proxy.record().annotations["policy"]["blocked"] == {"stage": "request", "rule": "weapons"}


def test_responses_item_name_is_judged(upstream: ScriptedUpstream, start_with_policy: StartWithPolicy) -> None:
    proxy = start_with_policy(upstream.url, POLICY)
    item = {"type": "function_call", "call_id": "c", "name": "nerve agent", "arguments": "{}"}
    assert _post(proxy.url, {"model": "m", "input": [item]}, "/v1/responses").status_code == 400
    assert upstream.seen == []


def test_a_body_nested_deeper_than_the_policy_reads_is_refused(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy
) -> None:
    proxy = start_with_policy(upstream.url, POLICY)
    tool = {"type": "function", "function": {"name": "f", "parameters": _deep(80)}}
    answer = _post(proxy.url, {"model": "m", "messages": [USER], "tools": [tool]})
    assert answer.status_code == 400
    assert "nests deeper" in answer.json()["error"]["message"]
    assert proxy.record().annotations["policy"]["blocked"] == {"stage": "request", "reason": "unparseable"}
    assert upstream.seen == []


def test_escaped_arguments_are_redacted_decoded_and_others_left_as_sent(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy
) -> None:
    upstream.script("/v1/chat/completions", Script(headers=JSON_HEADERS, chunks=[chat_completion("ok")]))
    proxy = start_with_policy(upstream.url, POLICY)
    untouched = '{ "x" :  1 }'
    message = {
        "role": "assistant",
        "tool_calls": [
            {**CALL, "function": {"name": "lookup", "arguments": '{"q": "bl\\u0075ebird"}'}},
            {**CALL, "id": "c2", "function": {"name": "lookup", "arguments": untouched}},
        ],
    }
    assert _post(proxy.url, {"model": "m", "messages": [USER, message]}).status_code == 200
    calls = orjson.loads(upstream.seen[0].body)["messages"][1]["tool_calls"]
    assert orjson.loads(calls[0]["function"]["arguments"]) == {"q": "[REDACTED]"}
    assert calls[1]["function"]["arguments"] == untouched


def test_protocol_keys_are_not_rewritten_by_a_keyword_that_names_them(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy
) -> None:
    """A redact keyword that happens to be a field name (`system`) rewrites text, never the field."""
    done = orjson.dumps({"model": "m", "response": "ok", "done": True}) + b"\n"
    upstream.script("/api/generate", Script(headers={"Content-Type": "application/x-ndjson"}, chunks=[done]))
    policy = "sampling: []\nrules:\n  - name: words\n    keywords: [system, bluebird]\n    action: redact\n"
    proxy = start_with_policy(upstream.url, policy)
    with ollama.Client(host=proxy.url, timeout=60) as api:
        api.generate(model="m", prompt="the system", system="be brief", format={"properties": {"bluebird": {}}})
    sent = orjson.loads(upstream.seen[0].body)
    assert sent["system"] == "be brief" and sent["prompt"] == "the [REDACTED]"
    assert sent["format"] == {"properties": {"[REDACTED]": {}}}

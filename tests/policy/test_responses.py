"""OpenAI's Responses API (`/v1/responses`) through the real proxy with the real `openai` client:
requests judged (input, instructions, function-call items, sampling), answers redacted or blocked,
streamed (typed events, whose `*.done` and `response.completed` events repeat the whole text) and
whole. Events are shaped after OpenAI's API reference for streaming responses."""

from __future__ import annotations

from typing import Any

import openai
import orjson
import pytest

from tests.policy.conftest import StartWithPolicy
from tests.support.frames import JSON_HEADERS, SSE_HEADERS
from tests.support.upstream import Script, ScriptedUpstream

POLICY = """
sampling:
  - name: limits
    max_tokens: {max: 256}
rules:
  - name: weapons
    keywords: [nerve agent]
    action: block
  - name: codenames
    keywords: [bluebird]
    action: redact
  - name: launch
    keywords: [launch code]
    action: block
    stages: [response]
phi: {request: flag, response: redact, categories: [ssn]}
"""


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="sk-caller", max_retries=0, timeout=60)


def _response(text: str) -> dict[str, Any]:
    message = {
        "type": "message",
        "id": "msg_1",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": [{"token": "x"}]}],
    }
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": 1,
        "model": "m",
        "status": "completed",
        "output": [message],
        "parallel_tool_calls": False,
        "tool_choice": "auto",
        "tools": [],
    }


def _events(pieces: list[str]) -> list[bytes]:
    text = "".join(pieces)
    ids = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": {**_response(""), "status": "in_progress", "output": []}},
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": {**_response("")["output"][0], "content": []},
        },
        {"type": "response.content_part.added", **ids, "part": {"type": "output_text", "text": "", "annotations": []}},
        *({"type": "response.output_text.delta", **ids, "delta": piece, "logprobs": []} for piece in pieces),
        {"type": "response.output_text.done", **ids, "text": text, "logprobs": []},
        {"type": "response.content_part.done", **ids, "part": {"type": "output_text", "text": text, "annotations": []}},
        {"type": "response.output_item.done", "output_index": 0, "item": _response(text)["output"][0]},
        {"type": "response.completed", "response": _response(text)},
    ]
    return [
        b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps({**e, "sequence_number": n}) + b"\n\n"
        for n, e in enumerate(events)
    ]


@pytest.mark.parametrize(
    "request_body",
    [
        {"input": "how is a nerve agent made?"},
        {"input": "hi", "instructions": "Explain nerve agent synthesis."},
        {"input": [{"role": "user", "content": [{"type": "input_text", "text": "a nerve agent"}]}]},
        {"input": [{"type": "function_call_output", "call_id": "c1", "output": "nerve agent recipe"}]},
        {"input": [{"type": "function_call", "call_id": "c1", "name": "f", "arguments": '{"q": "nerve agent"}'}]},
        {
            "input": [
                {
                    "role": "user",
                    "content": [{"type": "input_text", "text": "a nerve"}, {"type": "input_text", "text": "agent"}],
                }
            ]
        },
    ],
    ids=["input", "instructions", "parts", "tool-output", "tool-call", "split-across-parts"],
)
def test_request_text_is_judged(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy, request_body: dict[str, Any]
) -> None:
    proxy = start_with_policy(upstream.url, POLICY)
    with client(proxy.url) as api, pytest.raises(openai.BadRequestError):
        api.responses.create(model="m", **request_body)
    assert upstream.seen == []


def test_streamed_answer_is_redacted_in_deltas_and_in_every_repeat(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy
) -> None:
    upstream.script(
        "/v1/responses", Script(headers=SSE_HEADERS, chunks=_events(["Blue", "bird is at 219-55-", "0187 ok"]))
    )
    proxy = start_with_policy(upstream.url, POLICY)
    with client(proxy.url) as api:
        events = list(api.responses.create(model="m", input="hi", stream=True, max_output_tokens=4096))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    expected = "[REDACTED] is at [SSN] ok"
    assert deltas == expected
    assert [e.text for e in events if e.type == "response.output_text.done"] == [expected]
    assert [e.part.text for e in events if e.type == "response.content_part.done"] == [expected]  # type: ignore[union-attr]
    completed = next(e for e in events if e.type == "response.completed")
    assert completed.response.output_text == expected  # type: ignore[union-attr]
    assert "0187" not in str([e.model_dump() for e in events]) and "Bluebird" not in str(
        [e.model_dump() for e in events]
    )
    assert orjson.loads(upstream.seen[0].body)["max_output_tokens"] == 256
    record = proxy.record()
    assert {"rule": "codenames", "action": "redact", "stage": "response", "count": 1} in record.annotations["policy"][
        "actions"
    ]  # counted once, not once per repeat


def test_streamed_answer_blocked_with_an_error_event(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy
) -> None:
    upstream.script("/v1/responses", Script(headers=SSE_HEADERS, chunks=_events(["The launch", " code is 1234"])))
    proxy = start_with_policy(upstream.url, POLICY)
    received: list[Any] = []
    with client(proxy.url) as api, pytest.raises(openai.APIError) as caught:
        for event in api.responses.create(model="m", input="hi", stream=True):
            received.append(event)
    assert "launch" in str(caught.value)
    assert "launch code" not in "".join(getattr(e, "delta", "") or "" for e in received).lower()
    assert proxy.record().annotations["policy"]["blocked"] == {"stage": "response", "rule": "launch"}


def test_whole_answer_is_redacted_and_logprobs_removed(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy
) -> None:
    body = orjson.dumps(_response("Bluebird at 219-55-0187"))
    upstream.script("/v1/responses", Script(headers=JSON_HEADERS, chunks=[body], content_length=True))
    proxy = start_with_policy(upstream.url, POLICY)
    with client(proxy.url) as api:
        answer = api.responses.create(model="m", input="hi")
        raw = orjson.loads(api.responses.with_raw_response.create(model="m", input="hi").content)
    assert answer.output_text == "[REDACTED] at [SSN]"
    assert "logprobs" not in raw["output"][0]["content"][0]
    assert proxy.records(2)[0].annotations["policy"]["logprobs_stripped"] is True


def test_flag_rules_count_a_streamed_answer_left_byte_for_byte(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy
) -> None:
    chunks = _events(["the blue", "bird sings"])
    upstream.script("/v1/responses", Script(headers=SSE_HEADERS, chunks=chunks))
    policy = (
        "sampling: []\nrules:\n  - name: watch\n    keywords: [bluebird]\n    action: flag\nphi: {enabled: false}\n"
    )
    proxy = start_with_policy(upstream.url, policy)
    with (
        client(proxy.url) as api,
        api.responses.with_streaming_response.create(model="m", input="hi", stream=True) as raw,
    ):
        body = b"".join(raw.iter_bytes())
    assert body == b"".join(chunks)
    actions = proxy.record().annotations["policy"]["actions"]
    assert {"rule": "watch", "action": "flag", "stage": "response", "count": 1} in actions


@pytest.mark.parametrize("how", ["retrieve", "cancel"])
def test_a_stored_answer_fetched_by_id_is_redacted(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy, how: str
) -> None:
    body = orjson.dumps(_response("the bluebird SSN 219-55-0187"))
    for path in ("/v1/responses/resp_1", "/v1/responses/resp_1/cancel"):
        upstream.script(path, Script(headers=JSON_HEADERS, chunks=[body]))
    proxy = start_with_policy(upstream.url, POLICY)
    with client(proxy.url) as api:
        answer = api.responses.retrieve("resp_1") if how == "retrieve" else api.responses.cancel("resp_1")
    assert answer.output_text == "the [REDACTED] SSN [SSN]"
    assert answer.output[0].content[0].logprobs is None  # type: ignore[union-attr]


def test_a_stored_answer_with_a_blocked_text_is_refused(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy
) -> None:
    body = orjson.dumps(_response("the launch code is 0000"))
    upstream.script("/v1/responses/resp_1", Script(headers=JSON_HEADERS, chunks=[body], content_length=True))
    proxy = start_with_policy(upstream.url, POLICY)
    with client(proxy.url) as api, pytest.raises(openai.BadRequestError) as caught:
        api.responses.retrieve("resp_1")
    assert "launch code" not in str(caught.value.body)


def _call_events(pieces: list[str]) -> list[bytes]:
    arguments = "".join(pieces)
    item = {"type": "function_call", "id": "fc_1", "call_id": "c1", "name": "lookup", "status": "completed"}
    ids = {"item_id": "fc_1", "output_index": 0}
    done = {**_response(""), "output": [{**item, "arguments": arguments}]}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": {**_response(""), "status": "in_progress", "output": []}},
        {"type": "response.output_item.added", "output_index": 0, "item": {**item, "arguments": ""}},
        *({"type": "response.function_call_arguments.delta", **ids, "delta": piece} for piece in pieces),
        {"type": "response.function_call_arguments.done", **ids, "arguments": arguments},
        {"type": "response.output_item.done", "output_index": 0, "item": {**item, "arguments": arguments}},
        {"type": "response.completed", "response": done},
    ]
    return [
        b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps({**e, "sequence_number": n}) + b"\n\n"
        for n, e in enumerate(events)
    ]


def test_streamed_function_call_arguments_with_escapes_are_redacted_everywhere(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy
) -> None:
    chunks = _call_events(['{"q": "bl\\u00', '75ebird"}'])
    upstream.script("/v1/responses", Script(headers=SSE_HEADERS, chunks=chunks))
    proxy = start_with_policy(upstream.url, POLICY)
    with client(proxy.url) as api:
        events = list(api.responses.create(model="m", input="hi", stream=True))
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert orjson.loads(deltas) == {"q": "[REDACTED]"}
    done = [e.arguments for e in events if e.type == "response.function_call_arguments.done"]
    assert [orjson.loads(text) for text in done] == [{"q": "[REDACTED]"}]
    completed = next(e for e in events if e.type == "response.completed")
    assert "bl\\u0075ebird" not in completed.model_dump_json() and "bluebird" not in completed.model_dump_json()


def test_streamed_function_call_arguments_with_an_escaped_blocked_keyword_are_stopped(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy
) -> None:
    upstream.script(
        "/v1/responses", Script(headers=SSE_HEADERS, chunks=_call_events(['{"q": "the l\\u0061unch', ' code"}']))
    )
    proxy = start_with_policy(upstream.url, POLICY)
    with client(proxy.url) as api, pytest.raises(openai.APIError):
        list(api.responses.create(model="m", input="hi", stream=True))
    assert proxy.record().annotations["policy"]["blocked"] == {"stage": "response", "rule": "launch"}

"""Ollama reads JSON keys as Go's encoding/json does: case-insensitively, with Unicode simple folding
(`Prompt`, `PROMPT`, `\u017fystem` with a long s), the last of two keys for one field winning. The policy
must read the same fields: odd spellings are judged (and forwarded under their canonical name), and
two keys naming one field are refused. Through the real proxy on real sockets."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from tests.policy.conftest import StartWithPolicy
from tests.support.frames import JSON_HEADERS, chat_completion
from tests.support.upstream import Script, ScriptedUpstream

POLICY = """
sampling:
  - name: temperature-bounds
    temperature: {max: 1.0}
rules:
  - name: weapons
    keywords: [nerve agent]
    action: block
phi:
  request: block
  categories: [ssn]
"""

NERVE = "How is a nerve agent made?"
USER_NERVE = [{"role": "user", "content": NERVE}]


def _post(url: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(url + path, content=orjson.dumps(body), headers={"content-type": "application/json"}, timeout=60)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/generate", {"model": "m", "Prompt": NERVE}),
        ("/api/generate", {"model": "m", "\u017fystem": "nerve agent", "prompt": "hi"}),  # long s folds to s
        ("/api/generate", {"model": "m", "prompt": "hi", "SYSTEM": "nerve agent"}),
        ("/api/chat", {"model": "m", "Messages": USER_NERVE}),
        ("/api/chat", {"model": "m", "messages": [{"role": "user", "Content": NERVE}]}),
        ("/v1/chat/completions", {"model": "m", "MESSAGES": USER_NERVE}),  # Ollama's OpenAI routes are Go too
    ],
    ids=["Prompt", "long-s-system", "SYSTEM", "Messages", "Content", "openai-MESSAGES"],
)
def test_a_field_spelled_differently_is_judged(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy, path: str, body: dict[str, Any]
) -> None:
    proxy = start_with_policy(upstream.url, POLICY)
    answer = _post(proxy.url, path, body)
    assert answer.status_code == 400, answer.text
    assert upstream.seen == []
    assert proxy.record().annotations["policy"]["blocked"] == {"stage": "request", "rule": "weapons"}


@pytest.mark.parametrize(
    "body",
    [
        {"model": "m", "prompt": "hi", "PROMPT": NERVE},  # Go keeps the last
        {"model": "m", "prompt": NERVE, "Prompt": "hi"},
        {"model": "m", "messages": [{"role": "user", "content": "hi", "CONTENT": NERVE}]},
        {"model": "m", "prompt": "hi", "options": {"temperature": 0.5, "Temperature": 5}},
    ],
    ids=["prompt-PROMPT", "prompt-Prompt", "content-CONTENT", "options-temperature"],
)
def test_two_keys_for_one_field_are_refused(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy, body: dict[str, Any]
) -> None:
    proxy = start_with_policy(upstream.url, POLICY)
    path = "/api/chat" if "messages" in body else "/api/generate"
    answer = _post(proxy.url, path, body)
    assert answer.status_code == 400
    assert "case-insensitive" in answer.json()["error"]
    assert upstream.seen == []
    assert proxy.record().annotations["policy"]["blocked"] == {"stage": "request", "reason": "ambiguous_keys"}
    assert proxy.metric("sentinel_policy_actions_total", rule="ambiguous_keys", action="block", stage="request") == 1


def test_odd_spellings_are_bounded_and_forwarded_canonical(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy
) -> None:
    upstream.script("/api/chat", Script(headers=JSON_HEADERS, chunks=[chat_completion("ok")]))
    proxy = start_with_policy(upstream.url, POLICY)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "Options": {"TEMPERATURE": 5.0}}
    assert _post(proxy.url, "/api/chat", body).status_code == 200
    sent = orjson.loads(upstream.seen[0].body)
    assert sent["options"] == {"temperature": 1.0}
    assert "Options" not in sent


def test_token_ids_under_another_spelling_are_refused(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy
) -> None:
    proxy = start_with_policy(upstream.url, POLICY)
    answer = _post(proxy.url, "/api/generate", {"model": "m", "prompt": "hi", "Context": [1, 2, 3]})
    assert answer.status_code == 400
    assert proxy.record().annotations["policy"]["blocked"] == {"stage": "request", "reason": "token_ids"}
    assert upstream.seen == []


@pytest.mark.parametrize(
    "body",
    [
        # Go merges two objects given for one map field: temperature 5 would survive the second `options`.
        b'{"model":"m","prompt":"hi","options":{"temperature":5},"options":{"top_k":1}}',
        # ...and for one struct field: the first `function`'s arguments would survive the second.
        b'{"model":"m","messages":[{"role":"assistant","tool_calls":[{"function":{"name":"f","arguments":'
        b'{"q":"nerve agent"}},"function":{"name":"g"}}]}]}',
    ],
    ids=["options-twice", "function-twice"],
)
def test_a_key_given_twice_with_different_values_is_refused(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy, body: bytes
) -> None:
    proxy = start_with_policy(upstream.url, POLICY)
    path = "/api/chat" if b"messages" in body else "/api/generate"
    answer = httpx.post(proxy.url + path, content=body, headers={"content-type": "application/json"}, timeout=60)
    assert answer.status_code == 400
    assert "given twice" in answer.json()["error"]
    assert proxy.record().annotations["policy"]["blocked"] == {"stage": "request", "reason": "ambiguous_keys"}
    assert upstream.seen == []

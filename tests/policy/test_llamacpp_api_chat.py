"""llama.cpp serves Ollama's `/api/chat` (and `/api/generate`) with its OpenAI handler: requests carry
top-level `temperature`/`max_tokens` and answers come back as `choices[]`. The policy decides by
shape, not route: both shapes' sampling fields are bounded and both shapes of answer are rewritten.
Through the real proxy on real sockets, posted as Dify's HTTP client would (httpx); the upstream is
scripted with llama.cpp's OpenAI answer shapes."""

from __future__ import annotations

import httpx
import orjson
import pytest

from tests.policy.conftest import StartWithPolicy
from tests.support.frames import JSON_HEADERS, SSE_HEADERS, chat_completion, vllm_chat_stream
from tests.support.upstream import Script, ScriptedUpstream

POLICY = """
sampling:
  - name: bounds
    temperature: {min: 0.1, max: 0.9}
    max_tokens: {max: 512}
rules:
  - name: codenames
    keywords: [bluebird]
    action: redact
  - name: launch
    keywords: [launch code]
    action: block
    stages: [response]
"""

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def _post(url: str, path: str, body: dict[str, object]) -> httpx.Response:
    return httpx.post(url + path, content=orjson.dumps(body), headers={"content-type": "application/json"}, timeout=60)


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate"])
def test_top_level_sampling_on_ollama_routes_is_bounded(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy, path: str
) -> None:
    upstream.script(path, Script(headers=JSON_HEADERS, chunks=[chat_completion("ok")]))
    proxy = start_with_policy(upstream.url, POLICY)
    body = {**CHAT, "prompt": "hi", "temperature": 5.0, "max_tokens": 100_000, "options": {"temperature": 3}}
    assert _post(proxy.url, path, body).status_code == 200
    sent = orjson.loads(upstream.seen[0].body)
    assert (sent["temperature"], sent["max_tokens"], sent["options"]["temperature"]) == (0.9, 512, 0.9)


def test_openai_shaped_answer_on_api_chat_is_redacted(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy
) -> None:
    upstream.script("/api/chat", Script(headers=JSON_HEADERS, chunks=[chat_completion("the bluebird flies")]))
    proxy = start_with_policy(upstream.url, POLICY)
    answer = _post(proxy.url, "/api/chat", CHAT)
    assert answer.json()["choices"][0]["message"]["content"] == "the [REDACTED] flies"


def test_openai_shaped_answer_on_api_chat_is_blocked(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy
) -> None:
    upstream.script(
        "/api/chat",
        Script(headers=JSON_HEADERS, chunks=[chat_completion("the launch code is 0000")], content_length=True),
    )
    proxy = start_with_policy(upstream.url, POLICY)
    answer = _post(proxy.url, "/api/chat", CHAT)
    assert answer.status_code == 400
    assert "launch code" not in answer.text
    assert proxy.record().annotations["policy"]["blocked"] == {"stage": "response", "rule": "launch"}


def test_openai_stream_on_api_chat_is_redacted(upstream: ScriptedUpstream, start_with_policy: StartWithPolicy) -> None:
    frames = vllm_chat_stream([], ["the blue", "bird flies"], include_usage=False)
    upstream.script("/api/chat", Script(headers=SSE_HEADERS, chunks=frames))
    proxy = start_with_policy(upstream.url, POLICY)
    answer = _post(proxy.url, "/api/chat", {**CHAT, "stream": True})
    assert "bluebird" not in answer.text.replace('"', "").replace(",", "")
    assert "[REDACTED]" in answer.text

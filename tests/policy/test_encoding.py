"""A caller's `Accept-Encoding: gzip` must not switch the answer rules off: while a response rule
applies, Sentinel asks the model server for `identity`, and a compressed answer that still arrives
is refused rather than passed on unread. Through the real proxy with the real `openai` client (which
sends `Accept-Encoding: gzip, deflate`)."""

from __future__ import annotations

import gzip

import openai
import pytest

from tests.policy.conftest import StartWithPolicy
from tests.support.frames import JSON_HEADERS, SSE_HEADERS, chat_completion, vllm_chat_stream
from tests.support.upstream import Script, ScriptedUpstream

POLICY = """
sampling: []
rules:
  - name: codenames
    keywords: [bluebird]
    action: redact
"""
FLAG = """
sampling: []
rules:
  - name: codenames
    keywords: [bluebird]
    action: flag
    stages: [request]
phi: {enabled: false}
"""


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="sk-caller", max_retries=0, timeout=60)


def test_upstream_is_asked_for_identity_and_the_answer_is_redacted(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy
) -> None:
    upstream.script("/v1/chat/completions", Script(headers=SSE_HEADERS, chunks=vllm_chat_stream([], ["a bluebird"])))
    proxy = start_with_policy(upstream.url, POLICY)
    with client(proxy.url) as api:
        stream = api.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True)
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "a [REDACTED]"
    assert upstream.seen[0].header("accept-encoding") == "identity"


def test_caller_encoding_is_kept_when_no_response_rule_applies(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy
) -> None:
    upstream.script("/v1/chat/completions", Script(headers=JSON_HEADERS, chunks=[chat_completion("ok")]))
    proxy = start_with_policy(upstream.url, FLAG)
    with client(proxy.url) as api:
        api.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert "gzip" in (upstream.seen[0].header("accept-encoding") or "")


@pytest.mark.parametrize("content_length", [True, False], ids=["whole", "chunked"])
def test_a_compressed_answer_is_refused_not_passed_unread(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy, content_length: bool
) -> None:
    headers = {**JSON_HEADERS, "Content-Encoding": "gzip"}
    body = gzip.compress(chat_completion("the bluebird flies"))
    upstream.script("/v1/chat/completions", Script(headers=headers, chunks=[body], content_length=content_length))
    proxy = start_with_policy(upstream.url, POLICY)
    with client(proxy.url) as api, pytest.raises(openai.APIError) as caught:
        api.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert "bluebird" not in str(caught.value)
    record = proxy.record()
    assert record.annotations["policy"]["blocked"] == {"stage": "response", "reason": "encoded_response"}

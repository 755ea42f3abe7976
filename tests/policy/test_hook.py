"""Policies enforced through the real proxy, with the real `openai` and `ollama` clients against a
scripted upstream on a real socket: what reaches the upstream, what reaches the client, what the
record and the metrics say."""

from __future__ import annotations

import json

import ollama
import openai
import orjson
import pytest

from sentinel.interaction import Outcome
from tests.conftest import wait_until
from tests.policy.conftest import StartWithPolicy
from tests.support.frames import (
    JSON_HEADERS,
    NDJSON_HEADERS,
    SSE_HEADERS,
    chat_completion,
    ollama_chat_stream,
    vllm_chat_stream,
)
from tests.support.upstream import Script, ScriptedUpstream

POLICY = """
sampling:
  - name: temperature-bounds
    temperature: {min: 0.1, max: 0.9}
    max_tokens: {max: 512}
rules:
  - name: codenames
    keywords: [Project Titan, bluebird]
    action: redact
  - name: weapons
    keywords: [nerve agent]
    action: block
    stages: [request]
    message: This assistant cannot help with that.
  - name: launch-codes
    patterns: ['LC-\\d{4}-[A-Z]{2}']
    action: block
    stages: [response]
  - name: competitor
    keywords: [acme corp]
    action: flag
phi:
  request: flag
  response: flag
"""

PHI_PROMPT = (
    "Patient: Maria Lopez, SSN 219-55-0187, MRN: 00482913, seen on 03/14/2024; "
    "call 415-555-2671 or write to maria.lopez@example.org."
)
PHI_VALUES = ["Maria Lopez", "219-55-0187", "00482913", "03/14/2024", "415-555-2671", "maria.lopez@example.org"]


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="sk-caller", max_retries=0, timeout=60)


def test_clamped_temperature_reaches_upstream_clamped(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy
) -> None:
    upstream.script("/v1/chat/completions", Script(headers=JSON_HEADERS, chunks=[chat_completion("ok")]))
    proxy = start_with_policy(upstream.url, POLICY)
    with client(proxy.url) as api:
        answer = api.chat.completions.create(
            model="deepseek-r1", messages=[{"role": "user", "content": "hi"}], temperature=1.7, max_tokens=4096
        )
    assert answer.choices[0].message.content == "ok"
    sent = orjson.loads(upstream.seen[0].body)
    assert sent["temperature"] == 0.9 and sent["max_tokens"] == 512
    record = proxy.record()
    assert record.sampling["temperature"] == 0.9  # the record holds what was forwarded...
    notes = record.annotations["policy"]["sampling"]  # ...and the policy notes what was asked
    assert notes["temperature"] == {"requested": 1.7, "applied": 0.9, "action": "clamp", "rule": "temperature-bounds"}
    assert notes["max_tokens"]["requested"] == 4096 and notes["max_tokens"]["applied"] == 512
    assert (
        proxy.metric("sentinel_policy_actions_total", rule="temperature-bounds", action="clamp", stage="request") == 2
    )


def test_omitted_temperature_is_left_unset(upstream: ScriptedUpstream, start_with_policy: StartWithPolicy) -> None:
    upstream.script("/v1/chat/completions", Script(headers=JSON_HEADERS, chunks=[chat_completion("ok")]))
    proxy = start_with_policy(upstream.url, POLICY)
    with client(proxy.url) as api:
        api.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        api.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], temperature=0.5)
    assert "temperature" not in orjson.loads(upstream.seen[0].body)
    assert orjson.loads(upstream.seen[1].body)["temperature"] == 0.5
    first, second = proxy.records(2)
    assert "policy" not in first.annotations
    assert second.annotations["policy"]["sampling"]["temperature"]["action"] == "within"


def test_rejecting_bound_refuses_with_openai_error(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy
) -> None:
    policy = "sampling:\n  - name: strict\n    top_p: {min: 0.5, max: 0.95, action: reject}\n"
    proxy = start_with_policy(upstream.url, policy)
    with client(proxy.url) as api, pytest.raises(openai.BadRequestError) as caught:
        api.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], top_p=0.99)
    assert "top_p 0.99 is outside the range 0.5-0.95" in str(caught.value)
    assert caught.value.body is not None and caught.value.body["type"] == "policy_blocked"  # type: ignore[index]
    assert upstream.seen == []
    assert proxy.record().outcome is Outcome.REJECTED


def test_blocked_prompt_never_reaches_upstream(upstream: ScriptedUpstream, start_with_policy: StartWithPolicy) -> None:
    upstream.script("/v1/chat/completions", Script(headers=JSON_HEADERS, chunks=[chat_completion("ok")]))
    proxy = start_with_policy(upstream.url, POLICY)
    with client(proxy.url) as api, pytest.raises(openai.BadRequestError) as caught:
        api.chat.completions.create(
            model="deepseek-r1",
            messages=[{"role": "user", "content": "How do I make a NERVE AGENT at home?"}],
            stream=True,
        )
    assert caught.value.status_code == 400
    assert "This assistant cannot help with that." in str(caught.value)
    assert upstream.seen == []
    record = proxy.record()
    assert record.outcome is Outcome.REJECTED and record.error_type == "policy_blocked"
    assert record.annotations["policy"]["blocked"] == {"stage": "request", "rule": "weapons"}
    assert proxy.metric("sentinel_policy_actions_total", rule="weapons", action="block", stage="request") == 1


def test_request_keyword_redacted_before_upstream(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy
) -> None:
    upstream.script("/v1/chat/completions", Script(headers=JSON_HEADERS, chunks=[chat_completion("ok")]))
    proxy = start_with_policy(upstream.url, POLICY)
    with client(proxy.url) as api:
        api.chat.completions.create(
            model="m",
            messages=[
                {"role": "system", "content": "You help with project titan."},
                {"role": "user", "content": [{"type": "text", "text": "Status of Bluebird and acme corp?"}]},
            ],
        )
    sent = orjson.loads(upstream.seen[0].body)
    assert sent["messages"][0]["content"] == "You help with [REDACTED]."
    assert sent["messages"][1]["content"][0]["text"] == "Status of [REDACTED] and acme corp?"
    actions = proxy.record().annotations["policy"]["actions"]
    assert {"rule": "codenames", "action": "redact", "stage": "request", "count": 2} in actions
    assert {"rule": "competitor", "action": "flag", "stage": "request", "count": 1} in actions


@pytest.mark.parametrize("split", ["Bl|uebird", "Project Ti|tan", "Pro|ject| Ti|t|an"])
def test_streamed_answer_redacted_across_chunk_boundaries(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy, split: str
) -> None:
    pieces = ["The plan: ", *split.split("|"), " launches", " tomorrow."]
    script = upstream.script(
        "/v1/chat/completions",
        Script(headers=SSE_HEADERS, chunks=vllm_chat_stream(["Think about ", *split.split("|")], pieces), delay=0.002),
    )
    proxy = start_with_policy(upstream.url, POLICY)
    with client(proxy.url) as api:
        stream = api.chat.completions.create(
            model="deepseek-r1",
            messages=[{"role": "user", "content": "what is the plan?"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    answer = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
    assert answer == "The plan: [REDACTED] launches tomorrow."
    assert reasoning == "Think about [REDACTED]"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 46  # frames stay well formed
    keyword = split.replace("|", "")
    record = proxy.record()
    assert keyword in (record.response_text or "")  # the (encrypted) record keeps what the model said
    assert {"rule": "codenames", "action": "redact", "stage": "response", "count": 2} in record.annotations["policy"][
        "actions"
    ]
    assert len(upstream.seen) == 1 and len(script.chunks) > 5


def test_flag_only_stream_passes_byte_for_byte_and_is_marked(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy
) -> None:
    script = upstream.script(
        "/v1/chat/completions",
        Script(headers=SSE_HEADERS, chunks=vllm_chat_stream(["hm"], ["Ask Acme", " Corp or mail", " a@b.org"])),
    )
    policy = "rules:\n  - name: competitor\n    keywords: [acme corp]\n    action: flag\n"
    proxy = start_with_policy(upstream.url, policy)
    with (
        client(proxy.url) as api,
        api.chat.completions.with_streaming_response.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True
        ) as response,
    ):
        received = b"".join(response.iter_bytes())
    assert received == script.body
    notes = proxy.record().annotations["policy"]
    assert {"rule": "competitor", "action": "flag", "stage": "response", "count": 1} in notes["actions"]
    assert notes["phi"] == {"response": {"email": 1}}


def test_blocked_stream_ends_with_error_event_and_cancels_upstream(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy
) -> None:
    """The upstream sends the code (role, keep-alive, three pieces), then holds the stream open: it can
    only end because Sentinel abandons the generation."""
    answer = ["Sure. The code is LC-", "4417-", "QX and more", *[" filler"] * 40]
    upstream.script(
        "/v1/chat/completions",
        Script(headers=SSE_HEADERS, chunks=vllm_chat_stream([], answer), delay=0.02, stall_after=5),
    )
    proxy = start_with_policy(upstream.url, POLICY)
    received = ""
    with client(proxy.url) as api, pytest.raises(openai.APIError) as caught:
        for chunk in api.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "code?"}], stream=True
        ):
            received += chunk.choices[0].delta.content or "" if chunk.choices else ""
    assert "blocked by Sentinel policy rule 'launch-codes'" in str(caught.value)
    assert "LC-" not in received and "4417" not in received
    record = proxy.record()
    assert record.outcome is Outcome.REJECTED and record.error_type == "policy_blocked"
    assert record.annotations["policy"]["blocked"] == {"stage": "response", "rule": "launch-codes"}
    wait_until(lambda: upstream.seen[0].cancelled, timeout=30)  # the generation was abandoned
    assert upstream.seen[0].completed is False


def test_phi_prompt_flagged_by_category_without_values(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy
) -> None:
    upstream.script("/v1/chat/completions", Script(headers=JSON_HEADERS, chunks=[chat_completion("Noted.")]))
    proxy = start_with_policy(upstream.url, POLICY)
    with client(proxy.url) as api:
        api.chat.completions.create(model="m", messages=[{"role": "user", "content": PHI_PROMPT}], user="dify-user-1")
    assert orjson.loads(upstream.seen[0].body)["messages"][0]["content"] == PHI_PROMPT  # flag: passed unchanged
    notes = proxy.record().annotations["policy"]
    assert notes["phi"]["request"] == {"name": 1, "ssn": 1, "mrn": 1, "date": 1, "phone": 1, "email": 1}
    assert {"rule": "phi", "action": "flag", "stage": "request", "count": 6} in notes["actions"]
    exposition = json.dumps(notes) + repr(list(proxy.registry.collect()))
    for value in PHI_VALUES:
        assert value not in exposition
    assert proxy.metric("sentinel_policy_phi_findings_total", category="ssn", stage="request") == 1


def test_phi_redacted_in_non_streamed_answer(upstream: ScriptedUpstream, start_with_policy: StartWithPolicy) -> None:
    upstream.script(
        "/v1/chat/completions",
        Script(headers=JSON_HEADERS, chunks=[chat_completion("Her SSN is 219-55-0187.")], content_length=True),
    )
    proxy = start_with_policy(upstream.url, "phi: {response: redact}\n")
    with client(proxy.url) as api:
        answer = api.chat.completions.create(model="m", messages=[{"role": "user", "content": "ssn?"}])
    assert answer.choices[0].message.content == "Her SSN is [SSN]."
    assert proxy.record().annotations["policy"]["phi"]["response"] == {"ssn": 1}


def test_scope_by_model_and_caller(upstream: ScriptedUpstream, start_with_policy: StartWithPolicy) -> None:
    upstream.script("/v1/chat/completions", Script(headers=JSON_HEADERS, chunks=[chat_completion("ok")]))
    policy = """
    sampling: []
    rules:
      - name: only-r1-for-alice
        keywords: [secret]
        action: redact
        scope: {models: ["deepseek-r1*"], users: [alice]}
    phi: {enabled: false}
    """
    proxy = start_with_policy(upstream.url, policy)
    with client(proxy.url) as api:
        for model, user in [("deepseek-r1:7b", "alice"), ("deepseek-r1:7b", "bob"), ("qwen", "alice")]:
            api.chat.completions.create(model=model, messages=[{"role": "user", "content": "a secret"}], user=user)
    contents = [orjson.loads(seen.body)["messages"][0]["content"] for seen in upstream.seen]
    assert contents == ["a [REDACTED]", "a secret", "a secret"]


def test_ollama_native_chat_clamped_redacted_and_blocked(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy
) -> None:
    upstream.script(
        "/api/chat",
        Script(
            headers=NDJSON_HEADERS, chunks=ollama_chat_stream(["thinking of blue", "bird"], ["Blue", "bird is", " go"])
        ),
    )
    proxy = start_with_policy(upstream.url, POLICY)
    with ollama.Client(host=proxy.url) as api:
        parts = list(
            api.chat(
                model="deepseek-r1:7b",
                messages=[{"role": "user", "content": "plan for project titan?"}],
                options={"temperature": 0.0, "num_predict": -1},
                stream=True,
            )
        )
        with pytest.raises(ollama.ResponseError) as caught:
            api.chat(model="deepseek-r1:7b", messages=[{"role": "user", "content": "nerve agent recipe"}])
    assert "".join(p.message.content or "" for p in parts) == "[REDACTED] is go"
    assert "".join(p.message.thinking or "" for p in parts) == "thinking of [REDACTED]"
    assert parts[-1].done is True and parts[-1].eval_count == 13
    sent = orjson.loads(upstream.seen[0].body)
    assert sent["options"] == {"temperature": 0.1, "num_predict": 512}
    assert sent["messages"][0]["content"] == "plan for [REDACTED]?"
    assert caught.value.error == "This assistant cannot help with that." and caught.value.status_code == 400
    assert len(upstream.seen) == 1


def test_ollama_generate_stream_blocked_with_error_line(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy
) -> None:
    lines = [
        orjson.dumps({"model": "m", "response": piece, "done": False}) + b"\n" for piece in ["code LC-12", "34-AB"]
    ]
    lines.append(orjson.dumps({"model": "m", "response": "", "done": True}) + b"\n")
    upstream.script("/api/generate", Script(headers=NDJSON_HEADERS, chunks=lines))
    proxy = start_with_policy(upstream.url, POLICY)
    with ollama.Client(host=proxy.url) as api, pytest.raises(ollama.ResponseError) as caught:
        list(api.generate(model="m", prompt="code?", stream=True))
    assert "launch-codes" in caught.value.error


def test_blocked_non_streamed_answer_becomes_an_error(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy
) -> None:
    upstream.script(
        "/v1/chat/completions",
        Script(headers=JSON_HEADERS, chunks=[chat_completion("The code is LC-4417-QX.")], content_length=True),
    )
    proxy = start_with_policy(upstream.url, POLICY)
    with client(proxy.url) as api, pytest.raises(openai.BadRequestError) as caught:
        api.chat.completions.create(model="m", messages=[{"role": "user", "content": "code?"}])
    assert "launch-codes" in str(caught.value) and "LC-4417" not in str(caught.value.body)
    record = proxy.record()
    assert record.outcome is Outcome.REJECTED and record.status_code == 400 and record.upstream_status == 200


def test_completions_stream_text_redacted(upstream: ScriptedUpstream, start_with_policy: StartWithPolicy) -> None:
    base = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m"}
    frames = [
        b"data: " + orjson.dumps({**base, "choices": [{"index": 0, "text": piece, "finish_reason": finish}]}) + b"\n\n"
        for piece, finish in [("Code name: blue", None), ("bird", None), (" ok", "stop")]
    ]
    upstream.script("/v1/completions", Script(headers=SSE_HEADERS, chunks=[*frames, b"data: [DONE]\n\n"]))
    proxy = start_with_policy(upstream.url, POLICY)
    with client(proxy.url) as api:
        text = "".join(c.choices[0].text for c in api.completions.create(model="m", prompt="x", stream=True))
    assert text == "Code name: [REDACTED] ok"


def test_policy_failure_fails_closed() -> None:
    from sentinel.interaction import Operation, Protocol
    from sentinel.policy.compiled import Policy
    from sentinel.policy.hook import PolicyHook
    from sentinel.proxy.exchange import Exchange
    from sentinel.telemetry.tracing import TraceStarter

    class Broken:
        @property
        def current(self) -> Policy | None:
            raise RuntimeError("corrupt policy state")

    exchange = Exchange(
        id="x",
        started_at=0.0,
        t_start=0.0,
        method="POST",
        path="/v1/chat/completions",
        query="",
        protocol=Protocol.OPENAI,
        operation=Operation.CHAT,
        trace=TraceStarter().start(None, None),
        request_body=b"{}",
    )
    refusal = PolicyHook(Broken()).on_request(exchange)
    assert refusal is not None and refusal.status == 500 and refusal.error_type == "internal"

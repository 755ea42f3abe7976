"""Fail closed: what the policy cannot read is refused, not forwarded unjudged. Bodies the strict
parser refuses but a FastAPI/pydantic server accepts (NaN, Infinity, lone surrogates, a byte-order
mark) are judged; routes the policy does not understand are refused unless listed under
`pass_through`. Through the real proxy on real sockets."""

from __future__ import annotations

import json

import httpx
import ollama
import openai
import orjson
import pytest

from sentinel.interaction import Outcome
from tests.policy.conftest import StartWithPolicy
from tests.support.frames import JSON_HEADERS, NDJSON_HEADERS, chat_completion, ollama_chat_stream
from tests.support.upstream import Script, ScriptedUpstream

POLICY = """
sampling:
  - name: temperature-bounds
    temperature: {min: 0.1, max: 0.9}
    top_p: {max: 0.95, action: reject}
    max_tokens: {max: 512}
rules:
  - name: weapons
    keywords: [nerve agent]
    action: block
  - name: codenames
    keywords: [bluebird]
    action: redact
phi:
  request: block
"""


def _post(url: str, body: bytes, path: str = "/v1/chat/completions") -> httpx.Response:
    return httpx.post(url + path, content=body, headers={"content-type": "application/json"}, timeout=60)


@pytest.mark.parametrize(
    "body",
    [
        # A NaN elsewhere in the body made the strict parser fail and the whole policy step out.
        b'{"model":"m","logit_bias":{"1":NaN},"messages":[{"role":"user","content":"make a nerve agent"}]}',
        b'{"model":"m","top_k":Infinity,"messages":[{"role":"user","content":"make a nerve agent"}]}',
        b'{"model":"m","messages":[{"role":"user","content":"\\ud800 make a nerve agent"}]}',
        b'\xef\xbb\xbf{"model":"m","messages":[{"role":"user","content":"make a nerve agent"}]}',
        '{"model":"m","messages":[{"role":"user","content":"make a nerve agent"}]}'.encode("utf-16"),
    ],
    ids=["nan", "infinity", "lone-surrogate", "bom", "utf-16"],
)
def test_bodies_python_json_reads_are_judged(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy, body: bytes
) -> None:
    assert json.loads(body)  # what a FastAPI server reads...
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(body)  # ...and the strict parser refuses
    proxy = start_with_policy(upstream.url, POLICY)
    answer = _post(proxy.url, body)
    assert answer.status_code == 400 and answer.json()["error"]["type"] == "policy_blocked"
    assert upstream.seen == []
    assert proxy.record().annotations["policy"]["blocked"] == {"stage": "request", "rule": "weapons"}


def test_lenient_body_is_rewritten_keeping_what_strict_json_cannot_say(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy
) -> None:
    upstream.script("/v1/chat/completions", Script(headers=JSON_HEADERS, chunks=[chat_completion("ok")]))
    proxy = start_with_policy(upstream.url, POLICY)
    body = b'{"model":"m","temperature":Infinity,"seed":NaN,"messages":[{"role":"user","content":"\\udc00 bluebird"}]}'
    assert _post(proxy.url, body).status_code == 200
    sent = json.loads(upstream.seen[0].body)
    assert sent["temperature"] == 0.9  # Infinity clamped, not skipped
    assert sent["seed"] != sent["seed"]  # NaN is still NaN for the server, not null
    assert sent["messages"][0]["content"] == "\udc00 [REDACTED]"


@pytest.mark.parametrize(
    "body",
    [b'{"model":"m","messages":[{"role":"user","content":"hi"}', b"\xff\xfe\x00garbage", b"[1, 2]", b"[" * 100_000],
    ids=["truncated", "not-text", "not-an-object", "deep"],
)
def test_unparseable_body_is_refused_and_recorded(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy, body: bytes
) -> None:
    proxy = start_with_policy(upstream.url, POLICY)
    answer = _post(proxy.url, body)
    assert answer.status_code == 400
    assert answer.json()["error"]["type"] == "policy_blocked"
    assert "cannot judge this request" in answer.json()["error"]["message"]
    assert upstream.seen == []
    record = proxy.record()
    assert record.outcome is Outcome.REJECTED
    assert record.annotations["policy"]["blocked"] == {"stage": "request", "reason": "unparseable"}
    assert proxy.metric("sentinel_policy_actions_total", rule="unparseable", action="block", stage="request") == 1


def test_unparseable_body_passes_on_a_listed_route(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy
) -> None:
    upstream.script("/v1/chat/completions", Script(headers=JSON_HEADERS, chunks=[chat_completion("ok")]))
    policy = POLICY + "pass_through:\n  routes: ['/v1/chat/*']\n"
    proxy = start_with_policy(upstream.url, policy)
    assert _post(proxy.url, b"{not json").status_code == 200
    assert upstream.seen[0].body == b"{not json"


@pytest.mark.parametrize("path", ["/v1/audio/transcriptions", "/infill", "/tokenize", "/v1/anything"])
def test_unknown_route_with_a_body_is_refused(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy, path: str
) -> None:
    proxy = start_with_policy(upstream.url, POLICY)
    answer = _post(proxy.url, b'{"input": "make a nerve agent", "prompt": "make a nerve agent"}', path)
    assert answer.status_code == 400
    assert f"cannot read requests to {path}" in answer.json()["error"]["message"]
    assert upstream.seen == []
    assert proxy.record().annotations["policy"]["blocked"] == {"stage": "request", "reason": "unknown_route"}


def test_unknown_route_passes_when_listed_and_without_a_body(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy
) -> None:
    upstream.script("/tokenize", Script(headers=JSON_HEADERS, chunks=[b'{"tokens": [1, 2]}']))
    upstream.script("/v1/models", Script(headers=JSON_HEADERS, chunks=[b'{"data": []}']))
    upstream.script("/api/show", Script(headers=JSON_HEADERS, chunks=[b'{"modelfile": "", "model_info": {}}']))
    proxy = start_with_policy(upstream.url, POLICY + "pass_through:\n  routes: ['/tokenize', '/api/show']\n")
    assert _post(proxy.url, b'{"content": "hello"}', "/tokenize").status_code == 200
    assert httpx.get(proxy.url + "/v1/models", timeout=60).status_code == 200
    with ollama.Client(host=proxy.url, timeout=60) as api:
        api.show("deepseek-r1")
    assert [seen.path for seen in upstream.seen] == ["/tokenize", "/v1/models", "/api/show"]


def test_unknown_route_is_refused_for_the_ollama_client(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy
) -> None:
    proxy = start_with_policy(upstream.url, POLICY + "pass_through:\n  routes: []\n")
    with ollama.Client(host=proxy.url, timeout=60) as api, pytest.raises(ollama.ResponseError) as caught:
        api.show("deepseek-r1")  # /api/show: not listed any more, so refused
    assert "cannot read requests to /api/show" in str(caught.value)
    assert upstream.seen == []


@pytest.mark.parametrize(("value", "sent"), [("2.0", 0.9), (True, 0.9), (" 1e3 ", 0.9), ("0.05", 0.1)])
def test_type_confused_temperature_is_judged_as_pydantic_reads_it(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy, value: object, sent: float
) -> None:
    upstream.script("/v1/chat/completions", Script(headers=JSON_HEADERS, chunks=[chat_completion("ok")]))
    proxy = start_with_policy(upstream.url, POLICY)
    with openai.OpenAI(base_url=proxy.url + "/v1", api_key="k", max_retries=0, timeout=60) as api:
        api.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], extra_body={"temperature": value}
        )
    assert orjson.loads(upstream.seen[0].body)["temperature"] == sent
    notes = proxy.record().annotations["policy"]["sampling"]["temperature"]
    assert notes["requested"] == value and notes["action"] == "clamp"


def test_type_confused_values_refused_where_the_bound_rejects(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy
) -> None:
    proxy = start_with_policy(upstream.url, POLICY)
    for body in (b'{"model":"m","top_p":"0.99","messages":[]}', b'{"model":"m","top_p":NaN,"messages":[]}'):
        answer = _post(proxy.url, body)
        assert answer.status_code == 400 and "top_p" in answer.json()["error"]["message"]
    assert upstream.seen == []


def test_token_limit_as_string_is_clamped(upstream: ScriptedUpstream, start_with_policy: StartWithPolicy) -> None:
    upstream.script("/v1/chat/completions", Script(headers=JSON_HEADERS, chunks=[chat_completion("ok")]))
    proxy = start_with_policy(upstream.url, POLICY)
    assert _post(proxy.url, b'{"model":"m","max_tokens":"4096","messages":[]}').status_code == 200
    assert orjson.loads(upstream.seen[0].body)["max_tokens"] == 512


def test_ollama_string_temperature_is_left_for_ollama_to_refuse(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy
) -> None:
    upstream.script("/api/chat", Script(headers=NDJSON_HEADERS, chunks=ollama_chat_stream([], ["ok"])))
    proxy = start_with_policy(upstream.url, POLICY)
    body = b'{"model":"m","options":{"temperature":"2.0"},"messages":[{"role":"user","content":"hi"}]}'
    assert _post(proxy.url, body, "/api/chat").status_code == 200
    assert upstream.seen[0].body == body  # Go's decoder refuses a string there itself


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", {"model": "m", "prompt": [5877, 8479]}),
        ("/v1/completions", {"model": "m", "prompt": [[5877, 8479], [1]]}),
        ("/completion", {"prompt": ["fine", [5877, 8479]]}),
        ("/api/generate", {"model": "m", "prompt": "go on", "context": [5877, 8479]}),
        ("/v1/embeddings", {"model": "m", "input": [[5877, 8479]]}),
    ],
    ids=["ids", "batches-of-ids", "llama-cpp-mixed", "ollama-context", "embeddings-ids"],
)
def test_token_id_prompts_are_refused(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy, path: str, body: dict[str, object]
) -> None:
    proxy = start_with_policy(upstream.url, POLICY)
    answer = _post(proxy.url, orjson.dumps(body), path)
    assert answer.status_code == 400 and "cannot judge token ids" in answer.text
    assert upstream.seen == []
    assert proxy.record().annotations["policy"]["blocked"] == {"stage": "request", "reason": "token_ids"}


def test_token_ids_pass_on_a_listed_route_and_text_is_still_judged(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy
) -> None:
    upstream.script("/v1/completions", Script(headers=JSON_HEADERS, chunks=[b'{"choices": []}']))
    proxy = start_with_policy(upstream.url, POLICY + "pass_through:\n  routes: ['/v1/completions']\n")
    assert _post(proxy.url, b'{"model": "m", "prompt": [5877, 8479]}', "/v1/completions").status_code == 200
    assert _post(proxy.url, b'{"model": "m", "prompt": "a nerve agent"}', "/v1/completions").status_code == 400


def test_unknown_route_is_refused_when_every_rule_names_its_operations(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy
) -> None:
    """llama.cpp's Anthropic-style /v1/messages is a chat in another shape: a rule limited to chats
    must not let it through unjudged."""
    policy = """
    sampling: []
    rules:
      - name: weapons
        keywords: [nerve agent]
        action: block
        scope: {operations: [chat]}
    phi: {enabled: false}
    """
    proxy = start_with_policy(upstream.url, policy)
    body = orjson.dumps({"model": "m", "max_tokens": 64, "messages": [{"role": "user", "content": "nerve agent"}]})
    answer = _post(proxy.url, body, "/v1/messages")
    assert answer.status_code == 400
    assert proxy.record().annotations["policy"]["blocked"] == {"stage": "request", "reason": "unknown_route"}
    assert upstream.seen == []


def test_a_bodiless_unknown_route_gets_its_answer_filtered(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy
) -> None:
    """A GET carries no request to judge, but its answer may carry text (an answer stored upstream)."""
    upstream.script("/v1/chat/completions/c1", Script(headers=JSON_HEADERS, chunks=[chat_completion("a bluebird")]))
    proxy = start_with_policy(upstream.url, POLICY)
    answer = httpx.get(proxy.url + "/v1/chat/completions/c1", timeout=60)
    assert answer.json()["choices"][0]["message"]["content"] == "a [REDACTED]"

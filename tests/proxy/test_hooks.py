"""The request-path extension points (`sentinel.proxy.hooks`), driven by small hooks defined here."""

from __future__ import annotations

from collections.abc import Callable

import orjson
import requests

from sentinel.interaction import Outcome
from sentinel.proxy.app import ProxyApp
from sentinel.proxy.exchange import Exchange
from sentinel.proxy.hooks import Refusal, ResponseFilter
from tests.conftest import Running
from tests.support.frames import SSE_HEADERS, vllm_chat_stream
from tests.support.upstream import Script, ScriptedUpstream


class Upper:
    """Upper-cases every byte, holding back the last byte of each chunk until the next one."""

    def __init__(self) -> None:
        self.held = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self.held + chunk
        self.held = data[-1:]
        return data[:-1].upper()

    def finish(self) -> bytes:
        return self.held.upper()


class ClampAndRefuse:
    def on_request(self, exchange: Exchange) -> Refusal | None:
        body = orjson.loads(exchange.request_body)
        if "forbidden" in str(body.get("messages")):
            return Refusal(400, "policy_blocked", "this prompt is not allowed")
        if body.get("temperature", 0) > 0.9:
            exchange.annotations["temperature"] = {"requested": body["temperature"], "applied": 0.9}
            body["temperature"] = 0.9
            exchange.request_body = orjson.dumps(body)
        return None

    def response_filter(self, exchange: Exchange) -> ResponseFilter | None:
        return Upper() if exchange.path.endswith("/chat/completions") else None


def install(proxy: Running) -> None:
    app: ProxyApp = proxy.sentinel.proxy
    app.request_hooks.append(ClampAndRefuse())


def test_hook_rewrites_request_and_refuses(upstream: ScriptedUpstream, start_sentinel: Callable[..., Running]) -> None:
    upstream.script("/v1/chat/completions", Script(chunks=[b'{"choices":[]}'], content_length=True))
    proxy = start_sentinel(upstream.url)
    install(proxy)
    ok = requests.post(
        proxy.url + "/v1/chat/completions", json={"model": "m", "messages": [], "temperature": 1.5}, timeout=30
    )
    assert ok.status_code == 200 and ok.content == b'{"CHOICES":[]}'
    assert ok.headers["content-length"] == str(len(b'{"CHOICES":[]}'))
    assert orjson.loads(upstream.seen[0].body)["temperature"] == 0.9
    refused = requests.post(
        proxy.url + "/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "forbidden"}]},
        timeout=30,
    )
    assert refused.status_code == 400 and refused.json()["error"]["type"] == "policy_blocked"
    assert len(upstream.seen) == 1  # the refused call never left
    first, second = proxy.records(2)
    assert first.annotations == {"temperature": {"requested": 1.5, "applied": 0.9}}
    assert first.sampling["temperature"] == 0.9  # the record says what was forwarded
    assert second.outcome is Outcome.REJECTED and second.error_type == "policy_blocked"


def test_response_filter_on_a_stream(upstream: ScriptedUpstream, start_sentinel: Callable[..., Running]) -> None:
    script = upstream.script("/v1/chat/completions", Script(headers=SSE_HEADERS, chunks=vllm_chat_stream([], ["ab"])))
    proxy = start_sentinel(upstream.url)
    install(proxy)
    response = requests.post(
        proxy.url + "/v1/chat/completions", json={"model": "m", "messages": [], "stream": True}, timeout=30
    )
    assert response.content == script.body.upper()
    assert proxy.record().response_text == "ab"  # the record keeps what the upstream said

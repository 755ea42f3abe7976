"""Failure behaviour: each way the upstream or the client can go wrong, through the real proxy."""

from __future__ import annotations

import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import ollama
import openai
import orjson
import pytest
import requests

from sentinel.interaction import ErrorType, Outcome
from tests.conftest import Running, wait_until
from tests.support.frames import NDJSON_HEADERS, SSE_HEADERS, vllm_chat_stream
from tests.support.upstream import Script, ScriptedUpstream, free_port

CHAT = {"model": "deepseek-r1", "messages": [{"role": "user", "content": "hi"}]}


def test_upstream_refused_gives_502_openai_error(start_sentinel: Callable[..., Running]) -> None:
    proxy = start_sentinel(f"http://127.0.0.1:{free_port()}")
    with openai.OpenAI(base_url=proxy.url + "/v1", api_key="k", max_retries=0) as client:
        with pytest.raises(openai.APIStatusError) as caught:
            client.chat.completions.create(**CHAT)
    assert caught.value.status_code == 502
    body = caught.value.response.json()
    assert body["error"]["type"] == "upstream_unreachable" and body["error"]["code"] == "bad_gateway"
    record = proxy.record()
    assert record.outcome is Outcome.ERROR and record.error_type == ErrorType.UPSTREAM_UNREACHABLE
    assert record.status_code == 502 and record.upstream_status is None
    assert proxy.metric("sentinel_errors_total", gen_ai_operation_name="chat", error_type="upstream_unreachable") == 1


def test_upstream_refused_on_ollama_route_gives_ollama_error(start_sentinel: Callable[..., Running]) -> None:
    proxy = start_sentinel(f"http://127.0.0.1:{free_port()}")
    with ollama.Client(host=proxy.url) as client, pytest.raises(ollama.ResponseError) as caught:
        client.chat(model="m", messages=[{"role": "user", "content": "x"}], stream=False)
    assert caught.value.status_code == 502 and "upstream unreachable" in caught.value.error


def test_upstream_that_never_answers_gives_504(
    upstream: ScriptedUpstream, start_sentinel: Callable[..., Running]
) -> None:
    """The upstream holds the request forever: only the configured 0.3 s read timeout can end it.

    Any other limit (the 300 s default read timeout included) is far beyond the client's 60 s
    safety net, so a 504 at all shows that the configured timeout fired; no stopwatch needed."""
    upstream.script("/v1/chat/completions", Script(hang_before_head=True, chunks=[b"{}"]))
    proxy = start_sentinel(upstream.url, upstream={"read_timeout": 0.3})
    response = requests.post(proxy.url + "/v1/chat/completions", json=CHAT, timeout=60)
    assert response.status_code == 504
    assert response.json()["error"]["type"] == "upstream_timeout"
    record = proxy.record()
    assert record.outcome is Outcome.ERROR and record.error_type == ErrorType.UPSTREAM_TIMEOUT
    assert record.upstream_status is None
    [seen] = upstream.seen  # the request did reach the upstream (no connect failure), and was never answered
    wait_until(lambda: seen.cancelled, timeout=30)  # the proxy let go of it
    assert seen.completed is False


def test_all_upstream_connections_busy_gives_504_saying_so(
    upstream: ScriptedUpstream, start_sentinel: Callable[..., Running]
) -> None:
    """One connection allowed, held by a call the upstream never answers: the next call waits at most
    `upstream.pool_timeout`, then gets a 504 that names the limit."""
    upstream.script("/v1/chat/completions", Script(hang_before_head=True, chunks=[b"{}"]))
    # The held call ends by its read timeout, 20 times the pool timeout: long after the second call's wait.
    proxy = start_sentinel(upstream.url, upstream={"max_connections": 1, "pool_timeout": 0.1, "read_timeout": 2})
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(requests.post, proxy.url + "/v1/chat/completions", json=CHAT, timeout=60)
        wait_until(lambda: len(upstream.seen) == 1)
        response = requests.post(proxy.url + "/v1/chat/completions", json=CHAT, timeout=60)
        assert response.status_code == 504
        error = response.json()["error"]
        assert error["type"] == "upstream_timeout"
        assert "no upstream connection came free within 0.1s" in error["message"]
        assert "upstream.max_connections" in error["message"]
        assert len(upstream.seen) == 1  # the second call never reached the model server
        assert "sent nothing for 2s" in held.result().json()["error"]["message"]


def test_connect_timeout_gives_504(start_sentinel: Callable[..., Running]) -> None:
    """A listener whose accept backlog is full never completes the TCP handshake."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        fillers = []
        for _ in range(4):  # fill the backlog so further connects hang
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(listener.getsockname())
            fillers.append(filler)
        proxy = start_sentinel(f"http://127.0.0.1:{listener.getsockname()[1]}", upstream={"connect_timeout": 0.3})
        response = requests.post(proxy.url + "/v1/chat/completions", json=CHAT, timeout=60)
        for filler in fillers:
            filler.close()
    assert response.status_code in (502, 504)  # kernels differ: SYN dropped (timeout) or refused
    assert proxy.record().outcome is Outcome.ERROR


@pytest.mark.parametrize("status", [400, 401, 404, 429, 500, 503])
def test_upstream_errors_pass_through_unchanged(upstream: ScriptedUpstream, proxy: Running, status: int) -> None:
    body = orjson.dumps({"object": "error", "message": f"upstream says {status}", "type": "X", "code": status})
    upstream.script(
        "/v1/chat/completions",
        Script(
            status=status,
            headers={"Content-Type": "application/json", "X-Upstream": "yes"},
            chunks=[body],
            content_length=True,
        ),
    )
    response = requests.post(proxy.url + "/v1/chat/completions", json=CHAT, timeout=30)
    assert response.status_code == status and response.content == body
    assert response.headers["x-upstream"] == "yes"
    record = proxy.record()
    assert record.outcome is Outcome.ERROR and record.upstream_status == status
    assert record.error_type == ("upstream_5xx" if status >= 500 else "upstream_4xx")
    assert record.error_message == f"upstream says {status}"


def test_body_over_limit_gets_413_and_never_reaches_upstream(
    upstream: ScriptedUpstream, start_sentinel: Callable[..., Running]
) -> None:
    upstream.script("/v1/chat/completions", Script(chunks=[b"{}"]))
    proxy = start_sentinel(upstream.url, max_body_bytes=4096)
    big = {"model": "m", "messages": [{"role": "user", "content": "x" * 10_000}]}
    response = requests.post(proxy.url + "/v1/chat/completions", json=big, timeout=30)
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"

    def chunked() -> object:  # no Content-Length: the limit must hold while reading
        for _ in range(10):
            yield b"x" * 1000

    response = requests.post(proxy.url + "/v1/chat/completions", data=chunked(), timeout=30)
    assert response.status_code == 413
    assert upstream.seen == []
    first, second = proxy.records(2)
    assert first.outcome is Outcome.REJECTED and first.error_type == ErrorType.REQUEST_TOO_LARGE
    assert second.outcome is Outcome.REJECTED and second.request_bytes > 4096


def test_malformed_json_is_forwarded_and_recorded(upstream: ScriptedUpstream, proxy: Running) -> None:
    error = b'{"error":{"message":"Expecting value","type":"BadRequestError","code":400}}'
    upstream.script("/v1/chat/completions", Script(status=400, chunks=[error], content_length=True))
    broken = b'{"model": "deepseek-r1", "messages": [{"role": '
    response = requests.post(
        proxy.url + "/v1/chat/completions", data=broken, headers={"Content-Type": "application/json"}, timeout=30
    )
    assert response.status_code == 400 and response.content == error
    assert upstream.seen[0].body == broken
    record = proxy.record()
    assert record.request_json_valid is False and record.error_type == "upstream_4xx"
    assert record.error_message == "Expecting value"


def test_client_disconnect_mid_stream_cancels_upstream(upstream: ScriptedUpstream, proxy: Running) -> None:
    """The upstream sends two chunks and then holds the stream open: the client leaves mid-stream
    whatever the scheduling, and only its leaving can end the upstream request."""
    frames = vllm_chat_stream([], [f"w{i} " for i in range(500)])
    upstream.script("/v1/chat/completions", Script(headers=SSE_HEADERS, chunks=frames, stall_after=2))
    sent = frames[0] + frames[1]
    received = b""
    with requests.post(
        proxy.url + "/v1/chat/completions", json={**CHAT, "stream": True}, stream=True, timeout=60
    ) as response:
        iterator = response.iter_content(chunk_size=None)
        while len(received) < len(sent):
            received += next(iterator)
    assert received == sent
    # Leaving the block closes the client socket mid-stream.
    wait_until(lambda: any(seen.cancelled for seen in upstream.seen), timeout=30)
    record = proxy.record()
    assert record.outcome is Outcome.ABORTED and record.error_type == ErrorType.CLIENT_DISCONNECT
    assert record.response_bytes == len(sent) < len(b"".join(frames))
    assert upstream.seen[0].completed is False
    assert proxy.metric("sentinel_requests_in_flight") == 0


def test_client_disconnect_while_upstream_thinks(upstream: ScriptedUpstream, proxy: Running) -> None:
    """A non-streamed call to a slow reasoning model: the client gives up before any byte arrives."""
    upstream.script("/v1/chat/completions", Script(hang_before_head=True, chunks=[b"{}"]))
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(proxy.url + "/v1/chat/completions", json=CHAT, timeout=(30, 0.3))
    wait_until(lambda: any(seen.cancelled for seen in upstream.seen), timeout=30)
    assert proxy.record().outcome is Outcome.ABORTED


def test_error_object_inside_200_stream_is_recorded_as_error(upstream: ScriptedUpstream, proxy: Running) -> None:
    frames = vllm_chat_stream([], ["partial"], include_usage=False)[:3]  # role, keep-alive, "partial"
    frames += [
        b'data: {"error": {"object": "error", "message": "CUDA out of memory", "type": "InternalServerError",'
        b' "code": 500}}\n\n',
        b"data: [DONE]\n\n",
    ]
    upstream.script("/v1/chat/completions", Script(headers=SSE_HEADERS, chunks=frames))
    response = requests.post(proxy.url + "/v1/chat/completions", json={**CHAT, "stream": True}, timeout=30)
    assert response.status_code == 200 and response.content == b"".join(frames)
    record = proxy.record()
    assert record.outcome is Outcome.ERROR and record.error_type == ErrorType.STREAM_ERROR
    assert record.error_message == "CUDA out of memory" and record.response_text == "partial"


def test_ollama_error_line_in_stream_is_recorded(upstream: ScriptedUpstream, proxy: Running) -> None:
    lines = [
        b'{"model":"m","message":{"role":"assistant","content":"a"},"done":false}\n',
        b'{"error":"model runner has unexpectedly stopped"}\n',
    ]
    upstream.script("/api/chat", Script(headers=NDJSON_HEADERS, chunks=lines))
    requests.post(proxy.url + "/api/chat", json={"model": "m", "messages": []}, timeout=30)
    record = proxy.record()
    assert record.error_type == ErrorType.STREAM_ERROR and "unexpectedly stopped" in (record.error_message or "")


def test_upstream_dying_mid_stream_cuts_the_client(upstream: ScriptedUpstream, proxy: Running) -> None:
    """The upstream sends five chunks, waits until the client has them, then cuts the connection."""
    frames = vllm_chat_stream([], [f"w{i} " for i in range(20)])
    script = upstream.script(
        "/v1/chat/completions", Script(headers=SSE_HEADERS, chunks=frames, pause_at=5, break_after=5)
    )
    sent = b"".join(frames[:5])
    received = b""
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        with requests.post(
            proxy.url + "/v1/chat/completions", json={**CHAT, "stream": True}, stream=True, timeout=60
        ) as response:
            iterator = response.iter_content(chunk_size=None)
            while len(received) < len(sent):
                received += next(iterator)
            script.gate.open()
            received += b"".join(iterator)
    assert received == sent
    record = proxy.record()
    assert record.outcome is Outcome.ERROR and record.error_type == ErrorType.UPSTREAM_BROKEN_STREAM


def test_upstream_stalling_mid_stream_times_out(
    upstream: ScriptedUpstream, start_sentinel: Callable[..., Running]
) -> None:
    frames = vllm_chat_stream([], [f"w{i} " for i in range(20)])
    upstream.script("/v1/chat/completions", Script(headers=SSE_HEADERS, chunks=frames, stall_after=3))
    proxy = start_sentinel(upstream.url, upstream={"read_timeout": 0.3})
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        with requests.post(
            proxy.url + "/v1/chat/completions", json={**CHAT, "stream": True}, stream=True, timeout=60
        ) as response:
            b"".join(response.iter_content(chunk_size=None))
    record = proxy.record()
    assert record.error_type == ErrorType.UPSTREAM_TIMEOUT and record.status_code == 200


def test_a_chat_the_upstream_read_and_then_died_on_is_not_generated_twice(
    upstream: ScriptedUpstream, proxy: Running
) -> None:
    """The upstream reads the POST on a kept-alive connection and ends the connection unanswered: it
    may have started the generation, so the client gets 502 and the upstream saw the call once."""
    upstream.script("/v1/models", Script(chunks=[b'{"data": []}']))
    upstream.script("/v1/chat/completions", Script(drop_before_head=True))
    with requests.Session() as session:
        assert session.get(proxy.url + "/v1/models", timeout=30).status_code == 200  # the connection is pooled
        answer = session.post(proxy.url + "/v1/chat/completions", json=CHAT, timeout=30)
    assert answer.status_code == 502
    assert [seen.path for seen in upstream.seen] == ["/v1/models", "/v1/chat/completions"]
    assert proxy.metric("sentinel_upstream_retries_total", reason="idle") is None

"""Real clients (openai sync and async, ollama, requests as Dify) through the real proxy to a scripted
upstream on a real socket: the bytes the client gets are the upstream's, and the record is right."""

from __future__ import annotations

import json
import socket

import ollama
import openai
import pytest
import requests

from sentinel.interaction import Operation, Outcome, Protocol
from tests.conftest import Running, wait_until
from tests.support.foreground import watch_foreground
from tests.support.frames import (
    JSON_HEADERS,
    NDJSON_HEADERS,
    SSE_HEADERS,
    chat_completion,
    ollama_chat_stream,
    vllm_chat_stream,
)
from tests.support.upstream import Script, ScriptedUpstream

REASONING = ["The ", "user ", "greets ", "me."]
ANSWER = ["Hello", "!", " How", " can", " I", " help?"]


def test_openai_stream_reaches_client_byte_for_byte(upstream: ScriptedUpstream, proxy: Running) -> None:
    script = upstream.script(
        "/v1/chat/completions",
        Script(headers=SSE_HEADERS, chunks=vllm_chat_stream(REASONING, ANSWER, reasoning_tokens=4), delay=0.002),
    )
    with (
        openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-caller", max_retries=0) as client,
        client.chat.completions.with_streaming_response.create(
            model="deepseek-r1",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        ) as response,
    ):
        received = b"".join(response.iter_bytes())
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert received == script.body

    record = proxy.record()
    assert record.operation is Operation.CHAT and record.protocol is Protocol.OPENAI
    assert record.stream is True
    assert record.outcome is Outcome.OK and record.status_code == 200
    assert record.response_text == "".join(ANSWER)
    assert record.reasoning_text == "".join(REASONING)
    assert (record.usage.input_tokens, record.usage.output_tokens, record.usage.reasoning_tokens) == (12, 34, 4)
    assert record.finish_reason == "stop"
    assert record.model_returned == "deepseek-r1"
    assert record.response_bytes == len(script.body)
    assert record.request_messages == [{"role": "user", "content": "hi"}]
    # The first generated token is the first reasoning delta, the chunk after the role chunk. Sentinel
    # took the request before the upstream wrote the role chunk and saw that delta after it was
    # written, so its TTFT spans at least the gap between those two writes (same perf_counter clock).
    seen = upstream.seen[0]
    assert record.ttft_s is not None and seen.sent_at[1] - seen.sent_at[0] <= record.ttft_s < record.duration_s


def test_openai_sdk_parses_stream_through_proxy(upstream: ScriptedUpstream, proxy: Running) -> None:
    upstream.script(
        "/v1/chat/completions",
        Script(headers=SSE_HEADERS, chunks=vllm_chat_stream(REASONING, ANSWER, reasoning_field="reasoning")),
    )
    with openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-caller", max_retries=0) as client:
        stream = client.chat.completions.create(
            model="deepseek-r1",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "".join(ANSWER)
    record = proxy.record()
    assert record.reasoning_text == "".join(REASONING)  # vLLM's newer `delta.reasoning` field
    assert record.usage.input_tokens == 12


async def test_async_openai_stream_and_non_stream(upstream: ScriptedUpstream, proxy: Running) -> None:
    upstream.script("/v1/chat/completions", Script(headers=SSE_HEADERS, chunks=vllm_chat_stream(REASONING, ANSWER)))
    client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="sk-caller", max_retries=0)
    stream = await client.chat.completions.create(
        model="deepseek-r1",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
        temperature=0.3,
        user="end-user-7",
    )
    chunks = [c async for c in stream]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 34

    body = chat_completion("Paris.", reasoning="Capital of France.", usage=(9, 7))
    upstream.script("/v1/chat/completions", Script(headers=JSON_HEADERS, chunks=[body], content_length=True))
    raw = await client.chat.completions.with_raw_response.create(
        model="deepseek-r1", messages=[{"role": "user", "content": "capital?"}], max_tokens=20
    )
    assert raw.http_response.content == body
    assert raw.parse().choices[0].message.content == "Paris."
    await client.close()

    streamed, whole = proxy.records(2)
    assert streamed.sampling["temperature"] == 0.3 and streamed.caller.user == "end-user-7"
    assert whole.stream is False and whole.ttft_s is None
    assert whole.response_text == "Paris." and whole.reasoning_text == "Capital of France."
    assert (whole.usage.input_tokens, whole.usage.output_tokens) == (9, 7)
    assert whole.sampling["max_tokens"] == 20


def test_dify_style_request(upstream: ScriptedUpstream, proxy: Running) -> None:
    """What Dify's OpenAI-compatible provider sends: requests, streaming, include_usage, `user`."""
    script = upstream.script(
        "/v1/chat/completions", Script(headers=SSE_HEADERS, chunks=vllm_chat_stream(REASONING, ANSWER), delay=0.001)
    )
    payload = {
        "model": "deepseek-r1",
        "messages": [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "user": "abc-123-dify-end-user",
        "temperature": 0.7,
        "max_tokens": 512,
    }
    headers = {"Authorization": "Bearer app-key", "Content-Type": "application/json"}
    with requests.post(
        proxy.url + "/v1/chat/completions", json=payload, headers=headers, stream=True, timeout=(30, 300)
    ) as response:
        assert response.status_code == 200
        received = b"".join(response.iter_content(chunk_size=None))
    assert received == script.body
    assert upstream.seen[0].header("authorization") == "Bearer app-key"
    record = proxy.record()
    assert record.caller.user == "abc-123-dify-end-user"
    assert record.caller.api_key_id is not None and "app-key" not in record.caller.api_key_id
    assert record.sampling == {"temperature": 0.7, "max_tokens": 512}
    assert record.usage.total_tokens == 46


def test_deepseek_provider_without_usage_records_unknown_tokens(upstream: ScriptedUpstream, proxy: Running) -> None:
    """Dify's DeepSeek provider sends no stream_options: no usage chunk, so tokens are unknown, not guessed."""
    upstream.script(
        "/v1/chat/completions", Script(headers=SSE_HEADERS, chunks=vllm_chat_stream([], ANSWER, include_usage=False))
    )
    payload = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    requests.post(proxy.url + "/v1/chat/completions", json=payload, timeout=30).raise_for_status()
    record = proxy.record()
    assert record.usage.input_tokens is None and record.usage.output_tokens is None and record.usage.source is None
    assert (
        proxy.metric("sentinel_usage_unknown_total", gen_ai_operation_name="chat", gen_ai_request_model="deepseek-chat")
        == 1
    )


def test_completions_embeddings_and_models(
    upstream: ScriptedUpstream, proxy: Running, request: pytest.FixtureRequest
) -> None:
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="k", max_retries=0)
    request.addfinalizer(client.close)
    completion = b'{"id":"c1","object":"text_completion","model":"m","choices":[{"index":0,"text":" world","finish_reason":"length"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}'  # noqa: E501
    upstream.script("/v1/completions", Script(chunks=[completion]))
    assert client.completions.create(model="m", prompt="hello").choices[0].text == " world"
    embedding = b'{"object":"list","model":"e","data":[{"object":"embedding","index":0,"embedding":[0.5,0.25]}],"usage":{"prompt_tokens":3,"total_tokens":3}}'  # noqa: E501
    upstream.script("/v1/embeddings", Script(chunks=[embedding]))
    assert client.embeddings.create(model="e", input="abc def").data[0].embedding == [0.5, 0.25]
    models = b'{"object":"list","data":[{"id":"deepseek-r1","object":"model","created":0,"owned_by":"vllm"}]}'
    upstream.script("/v1/models", Script(chunks=[models]))
    assert [m.id for m in client.models.list()] == ["deepseek-r1"]

    completion_rec, embedding_rec, models_rec = proxy.records(3)
    assert completion_rec.operation is Operation.TEXT_COMPLETION and completion_rec.response_text == " world"
    assert completion_rec.request_messages == "hello" and completion_rec.finish_reason == "length"
    assert embedding_rec.operation is Operation.EMBEDDINGS and embedding_rec.usage.input_tokens == 3
    assert embedding_rec.response_text is None  # vectors are not content worth keeping
    assert models_rec.operation is Operation.OTHER and models_rec.method == "GET"


def test_ollama_client_chat_generate_embed_tags_ps(
    upstream: ScriptedUpstream, proxy: Running, request: pytest.FixtureRequest
) -> None:
    script = upstream.script(
        "/api/chat",
        Script(headers=NDJSON_HEADERS, chunks=ollama_chat_stream(["Hmm", "..."], ["Hi", " there"]), delay=0.002),
    )
    client = ollama.Client(host=proxy.url)
    request.addfinalizer(client.close)
    parts = list(
        client.chat(
            model="deepseek-r1:7b",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            think=True,
            options={"temperature": 0.2, "num_predict": 100},
        )
    )
    assert "".join(p.message.content or "" for p in parts) == "Hi there"
    assert parts[-1].done and parts[-1].eval_count == 13

    generate = b'{"model":"deepseek-r1:7b","created_at":"2025-01-01T00:00:00Z","response":"42","done":true,"done_reason":"stop","prompt_eval_count":5,"eval_count":1}'  # noqa: E501
    upstream.script("/api/generate", Script(chunks=[generate]))
    assert client.generate(model="deepseek-r1:7b", prompt="answer?", stream=False).response == "42"
    upstream.script("/api/embed", Script(chunks=[b'{"model":"e","embeddings":[[0.1,0.2]],"prompt_eval_count":2}']))
    assert client.embed(model="e", input="x").embeddings == [[0.1, 0.2]]
    upstream.script("/api/tags", Script(chunks=[b'{"models":[{"name":"deepseek-r1:7b","model":"deepseek-r1:7b"}]}']))
    assert client.list().models[0].model == "deepseek-r1:7b"
    upstream.script("/api/ps", Script(chunks=[b'{"models":[{"name":"deepseek-r1:7b","size_vram":5000}]}']))
    assert client.ps().models[0].size_vram == 5000

    chat, generated, embedded, tags, ps = proxy.records(5)
    assert chat.protocol is Protocol.OLLAMA and chat.operation is Operation.CHAT and chat.stream
    assert chat.response_bytes == len(script.body)
    assert chat.response_text == "Hi there" and chat.reasoning_text == "Hmm..."
    assert (chat.usage.input_tokens, chat.usage.output_tokens, chat.usage.source) == (21, 13, "ollama")
    assert chat.sampling["temperature"] == 0.2 and chat.sampling["max_tokens"] == 100 and chat.sampling["think"]
    assert chat.ttft_s is not None and chat.finish_reason == "stop"
    assert generated.operation is Operation.TEXT_COMPLETION and generated.response_text == "42"
    assert generated.stream is False
    assert embedded.operation is Operation.EMBEDDINGS and embedded.usage.input_tokens == 2
    assert tags.operation is Operation.OTHER and ps.path == "/api/ps"


def test_ollama_stream_bytes_identical(upstream: ScriptedUpstream, proxy: Running) -> None:
    script = upstream.script(
        "/api/generate",
        Script(
            headers=NDJSON_HEADERS,
            chunks=[
                b'{"response":"a","done":false}\n{"resp',
                b'onse":"b","done":false}\n',
                b'{"response":"","done":true,"eval_count":2,"prompt_eval_count":1}\n',
            ],
        ),
    )
    with requests.post(
        proxy.url + "/api/generate", json={"model": "m", "prompt": "p"}, stream=True, timeout=30
    ) as response:
        received = b"".join(response.iter_content(chunk_size=None))
    assert received == script.body
    record = proxy.record()
    assert record.response_text == "ab" and record.usage.output_tokens == 2


@pytest.mark.parametrize("n_chunks", [1, 200])
def test_many_small_chunks_and_one_big_one(upstream: ScriptedUpstream, proxy: Running, n_chunks: int) -> None:
    answer = [f"w{i} " for i in range(n_chunks)]
    script = upstream.script("/v1/chat/completions", Script(headers=SSE_HEADERS, chunks=vllm_chat_stream([], answer)))
    if n_chunks == 1:
        script.chunks = [b"".join(script.chunks)]  # the whole stream in one network write
    with requests.post(
        proxy.url + "/v1/chat/completions", json={"model": "m", "stream": True, "messages": []}, stream=True, timeout=30
    ) as response:
        assert b"".join(response.iter_content(chunk_size=None)) == script.body
    assert proxy.record().response_text == "".join(answer)


def test_a_client_that_reads_slowly_gets_every_byte_in_order(upstream: ScriptedUpstream, proxy: Running) -> None:
    """Chunks go to the client straight from the upstream's read callback until the client's send
    buffer is full; then the proxy waits for the client through ASGI. The client here reads nothing
    until Sentinel has had to wait for it, then reads everything: the bytes are the upstream's."""
    frames = [
        b"data: " + json.dumps({"choices": [{"delta": {"content": f"w{i:05d} " + "x" * 900}}]}).encode() + b"\n\n"
        for i in range(3000)
    ] + [b"data: [DONE]\n\n"]
    script = upstream.script("/v1/chat/completions", Script(headers=SSE_HEADERS, chunks=frames))
    body = json.dumps({"model": "m", "stream": True, "messages": []}).encode()
    host, port = proxy.url.removeprefix("http://").rsplit(":", 1)
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(30)
        sock.connect((host, int(port)))
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: s\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
        )
        servers = proxy.sentinel.extras["servers"]
        wait_until(lambda: any(c.flow.write_paused for c in list(servers["proxy"].server_state.connections)))
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, chunked = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert _dechunk(chunked) == script.body
    record = proxy.record()
    assert record.response_bytes == len(script.body)
    assert record.response_text == "".join(f"w{i:05d} " + "x" * 900 for i in range(3000))


def _dechunk(data: bytes) -> bytes:
    out = []
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return b"".join(out)
        out.append(data[:size])
        assert data[size : size + 2] == b"\r\n"
        data = data[size + 2 :]


def test_a_request_is_on_its_way_until_its_response_starts(upstream: ScriptedUpstream, proxy: Running) -> None:
    """What the recorder steps aside for (`Foreground`): a request counts from its arrival until its
    response starts, not while its stream runs on, and a failed one stops counting too."""
    foreground = watch_foreground(proxy)
    while_upstream_answers: list[int] = []
    frames = vllm_chat_stream(REASONING, ANSWER)
    script = upstream.script(
        "/v1/chat/completions",
        Script(
            headers=SSE_HEADERS,
            chunks=frames,
            pause_at=1,
            before=lambda _: while_upstream_answers.append(foreground.starting),
        ),
    )
    upstream.script("/v1/embeddings", Script(drop_before_head=True))
    with requests.post(
        proxy.url + "/v1/chat/completions", json={"model": "m", "stream": True, "messages": []}, stream=True, timeout=30
    ) as response:
        chunks = response.iter_content(chunk_size=None)
        received = next(chunks)  # the first frame: the stream is open, held by the upstream
        assert while_upstream_answers == [1]
        foreground.wait_for(lambda: foreground.starting == 0)
        script.gate.open()
        received += b"".join(chunks)
    assert received == script.body
    failed = requests.post(proxy.url + "/v1/embeddings", json={"model": "m", "input": "x"}, timeout=30)
    assert failed.status_code == 502
    proxy.records(2)
    assert foreground.starting == 0 and not foreground._waiters

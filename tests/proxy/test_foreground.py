"""The proxy's count of requests on their way to their first byte (`cooperative.Foreground`): every way
an exchange can end stops counting it, exactly once, so the recorder is never held back by a request
that is gone."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable

import orjson
import requests

from sentinel.cooperative import Foreground
from sentinel.interaction import Outcome
from sentinel.proxy.app import ProxyApp
from sentinel.proxy.exchange import Exchange
from sentinel.proxy.hooks import JournalUnavailable, Refusal, ResponseFilter, StopResponse
from tests.conftest import Running
from tests.support.foreground import WatchedForeground, watch_foreground
from tests.support.frames import SSE_HEADERS, vllm_chat_stream
from tests.support.upstream import Script, ScriptedUpstream, refused_port

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def chat(content: str) -> dict[str, object]:
    return {"model": "m", "messages": [{"role": "user", "content": content}]}


JSON = b'{"choices":[{"message":{"role":"assistant","content":"hi"}}]}'


def foreground_of(proxy: Running) -> Foreground:
    foreground = proxy.sentinel.proxy.foreground
    assert foreground is not None
    return foreground


def settled(proxy: Running, records: int) -> None:
    """Once the exchanges are recorded nothing may still count: `_started` runs before `submit`."""
    proxy.records(records)
    foreground = foreground_of(proxy)
    assert foreground.starting == 0 and not foreground._waiters


def raw_request(proxy: Running, head: bytes, body: bytes = b"") -> socket.socket:
    host, port = proxy.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(head + body)
    return sock


def chat_head(length: int, path: str = "/v1/chat/completions") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def test_upstream_failures_stop_counting(upstream: ScriptedUpstream, start_sentinel: Callable[..., Running]) -> None:
    frames = vllm_chat_stream([], ["a", "b", "c"])
    upstream.script("/v1/chat/completions", Script(drop_before_head=True))
    upstream.script("/v1/completions", Script(hang_before_head=True, chunks=[b"{}"]))
    upstream.script("/v1/embeddings", Script(headers=SSE_HEADERS, chunks=frames, break_after=2))
    proxy = start_sentinel(upstream.url, upstream={"read_timeout": 0.3})
    assert requests.post(proxy.url + "/v1/chat/completions", json=CHAT, timeout=30).status_code == 502
    assert requests.post(proxy.url + "/v1/completions", json=CHAT, timeout=30).status_code == 504
    with contextlib.suppress(requests.exceptions.RequestException):  # cut mid-stream: a broken response
        requests.post(proxy.url + "/v1/embeddings", json=CHAT, timeout=30).content  # noqa: B018
    settled(proxy, 3)


def test_an_unreachable_upstream_stops_counting(start_sentinel: Callable[..., Running]) -> None:
    proxy = start_sentinel(f"http://127.0.0.1:{refused_port()}")
    assert requests.post(proxy.url + "/v1/chat/completions", json=CHAT, timeout=30).status_code == 502
    settled(proxy, 1)


def test_refusals_before_the_upstream_stop_counting(
    upstream: ScriptedUpstream, start_sentinel: Callable[..., Running]
) -> None:
    upstream.script("/v1/chat/completions", Script(chunks=[JSON], content_length=True))
    proxy = start_sentinel(upstream.url, max_body_bytes=4096)

    class Refuse:
        def on_request(self, exchange: Exchange) -> Refusal | None:
            return Refusal(400, "policy_blocked", "no") if b"forbidden" in exchange.request_body else None

        def response_filter(self, exchange: Exchange) -> ResponseFilter | None:
            return None

    proxy.sentinel.proxy.request_hooks.append(Refuse())
    big = {"model": "m", "messages": [{"role": "user", "content": "x" * 10_000}]}
    assert requests.post(proxy.url + "/v1/chat/completions", json=big, timeout=30).status_code == 413
    chunked = (b"x" * 1000 for _ in range(10))  # no Content-Length: refused while reading
    assert requests.post(proxy.url + "/v1/chat/completions", data=chunked, timeout=30).status_code == 413
    forbidden = {"model": "m", "messages": [{"role": "user", "content": "forbidden"}]}
    assert requests.post(proxy.url + "/v1/chat/completions", json=forbidden, timeout=30).status_code == 400
    assert requests.head(proxy.url + "/v1/chat/completions", timeout=30).status_code == 200
    settled(proxy, 4)


class Stop:
    """A response filter that stops the answer at its first chunk (streamed) or at once (whole)."""

    def feed(self, chunk: bytes) -> bytes:
        raise StopResponse(Refusal(451, "policy_blocked", "stopped"), b"")

    def finish(self) -> bytes:
        return b""


class Stopping:
    def on_request(self, exchange: Exchange) -> Refusal | None:
        return None

    def response_filter(self, exchange: Exchange) -> ResponseFilter | None:
        return Stop()


def test_a_response_filter_that_stops_stops_counting(
    upstream: ScriptedUpstream, start_sentinel: Callable[..., Running]
) -> None:
    upstream.script("/v1/chat/completions", Script(chunks=[JSON], content_length=True))
    upstream.script("/v1/completions", Script(headers=SSE_HEADERS, chunks=vllm_chat_stream([], ["a", "b"])))
    proxy = start_sentinel(upstream.url)
    proxy.sentinel.proxy.request_hooks.append(Stopping())
    assert requests.post(proxy.url + "/v1/chat/completions", json=CHAT, timeout=30).status_code == 451
    streamed = requests.post(proxy.url + "/v1/completions", json={**CHAT, "stream": True}, timeout=30)
    assert streamed.status_code == 200
    records = proxy.records(2)
    assert all(record.outcome is Outcome.REJECTED for record in records)
    settled(proxy, 2)


class FakeJournal:
    def __init__(self, fail_begin: bool = False, fail_complete: bool = False) -> None:
        self.fail_begin, self.fail_complete = fail_begin, fail_complete
        self.completed: list[str] = []

    async def begin(self, exchange: Exchange) -> None:
        if self.fail_begin:
            raise JournalUnavailable("full")

    async def complete(self, exchange: Exchange) -> None:
        self.completed.append(exchange.id)
        if self.fail_complete:
            raise JournalUnavailable("gone")


def test_strict_mode_refusals_and_completions_stop_counting(
    upstream: ScriptedUpstream, start_sentinel: Callable[..., Running]
) -> None:
    upstream.script("/v1/chat/completions", Script(chunks=[JSON], content_length=True))
    upstream.script("/v1/completions", Script(headers=SSE_HEADERS, chunks=vllm_chat_stream([], ["a", "b"])))
    upstream.script("/v1/embeddings", Script(drop_before_head=True))
    proxy = start_sentinel(upstream.url)
    app: ProxyApp = proxy.sentinel.proxy
    journal = FakeJournal(fail_begin=True)
    app.journal = journal
    assert requests.post(proxy.url + "/v1/chat/completions", json=CHAT, timeout=30).status_code == 503
    journal.fail_begin = False
    assert requests.post(proxy.url + "/v1/chat/completions", json=CHAT, timeout=30).status_code == 200
    streamed = requests.post(proxy.url + "/v1/completions", json={**CHAT, "stream": True}, timeout=30)
    assert streamed.status_code == 200
    assert requests.post(proxy.url + "/v1/embeddings", json=CHAT, timeout=30).status_code == 502
    journal.fail_complete = True
    assert requests.post(proxy.url + "/v1/chat/completions", json=CHAT, timeout=30).status_code == 503
    settled(proxy, 5)


def test_clients_that_leave_stop_counting(upstream: ScriptedUpstream, proxy: Running) -> None:
    """Before its body is complete, while the upstream thinks, and in the middle of a stream."""
    frames = vllm_chat_stream([], [f"w{i} " for i in range(50)])
    upstream.script("/v1/chat/completions", Script(hang_before_head=True, chunks=[b"{}"]))
    upstream.script("/v1/completions", Script(headers=SSE_HEADERS, chunks=frames, stall_after=1))
    foreground = watch_foreground(proxy)
    body = orjson.dumps(CHAT)
    with raw_request(proxy, chat_head(len(body) + 100), body):
        foreground.wait_for(lambda: foreground.starting == 1)  # arrived, its body not yet complete
    with raw_request(proxy, chat_head(len(body)), body):
        upstream.wait_for(lambda: len(upstream.seen) == 1)  # at the upstream, which never answers
        assert foreground.starting == 1
    with raw_request(proxy, chat_head(len(body), "/v1/completions"), body) as sock:
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")  # the stream has started
        foreground.wait_for(lambda: foreground.starting == 0)
    upstream.wait_for(lambda: sum(seen.cancelled for seen in upstream.seen) == 2)
    records = proxy.records(3)
    assert all(record.outcome is Outcome.ABORTED for record in records)
    settled(proxy, 3)


def test_requests_held_at_the_upstream_do_not_keep_the_others_from_being_recorded(
    upstream: ScriptedUpstream, proxy: Running
) -> None:
    """Callers hold requests on their way to their first byte (an upstream that never answers them)
    while others complete: every completed one is recorded, in order."""
    upstream.script("/v1/completions", Script(hang_before_head=True, chunks=[b"{}"]))
    upstream.script("/v1/chat/completions", Script(chunks=[JSON], content_length=True))
    foreground = foreground_of(proxy)
    body = orjson.dumps(CHAT)
    held = [raw_request(proxy, chat_head(len(body), "/v1/completions"), body) for _ in range(16)]
    try:
        upstream.wait_for(lambda: len(upstream.seen) == 16)
        assert foreground.starting == 16
        with requests.Session() as session:
            for index in range(40):
                response = session.post(proxy.url + "/v1/chat/completions", json=chat(str(index)), timeout=30)
                assert response.status_code == 200
        records = proxy.records(40)
        assert [record.request_messages[0]["content"] for record in records] == [str(i) for i in range(40)]
        assert foreground.starting == 16
    finally:
        for sock in held:
            sock.close()
    settled(proxy, 56)


def test_a_cancelled_handler_stops_counting(upstream: ScriptedUpstream) -> None:
    """Server shutdown cancels handlers: one waiting for its body and one waiting for the upstream."""
    upstream.script("/v1/chat/completions", Script(hang_before_head=True, chunks=[b"{}"]))

    class Recorder:
        def __init__(self) -> None:
            self.submitted: list[Exchange] = []

        def submit(self, exchange: Exchange) -> None:
            self.submitted.append(exchange)

    async def scenario() -> None:
        foreground = WatchedForeground()
        recorder = Recorder()
        app = ProxyApp(upstream.url, recorder, foreground=foreground)
        await app.start()
        forever: asyncio.Future[dict[str, object]] = asyncio.get_running_loop().create_future()
        body_sent = False

        async def receive_body() -> dict[str, object]:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": orjson.dumps(CHAT), "more_body": False}
            return await forever

        async def receive_nothing() -> dict[str, object]:
            return await forever

        async def send(message: object) -> None:
            raise AssertionError(f"nothing is sent: {message}")

        def scope(path: str) -> dict[str, object]:
            return {"type": "http", "method": "POST", "path": path, "headers": [], "query_string": b""}

        reading = asyncio.create_task(app(scope("/v1/chat/completions"), receive_nothing, send))
        waiting = asyncio.create_task(app(scope("/v1/chat/completions"), receive_body, send))
        # One reads its body, one waits upstream; the waits block a worker thread, not this loop.
        await asyncio.to_thread(foreground.wait_for, lambda: foreground.starting == 2)
        await asyncio.to_thread(upstream.wait_for, lambda: len(upstream.seen) == 1)
        assert not reading.done() and not waiting.done()
        reading.cancel()
        waiting.cancel()
        await asyncio.gather(reading, waiting, return_exceptions=True)
        assert foreground.starting == 0 and len(recorder.submitted) == 2
        await app.close()

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(scenario(), 60))
    finally:
        loop.close()

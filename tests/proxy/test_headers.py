"""What crosses the proxy besides the body: method, path, query, end-to-end headers; hop-by-hop ones do not."""

from __future__ import annotations

import http.client
from collections.abc import Callable
from urllib.parse import urlsplit

import pytest
import requests

from tests.conftest import Running
from tests.support.upstream import Script, ScriptedUpstream


def raw_request(
    url: str, method: str, path: str, headers: list[tuple[str, str]], body: bytes = b""
) -> tuple[int, list[tuple[str, str]], bytes]:
    """Send exactly these headers (requests would add and normalise some)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    for name, value in headers:
        conn.putheader(name, value)
    if body:
        conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body or None)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, response.getheaders(), data


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE"])
def test_method_path_query_and_body_unchanged(upstream: ScriptedUpstream, proxy: Running, method: str) -> None:
    upstream.script("/v1/files/file-%2Fabc", Script(chunks=[b'{"ok":true}']))
    body = b"" if method in ("GET", "DELETE") else b"\x00binary\xffbody"
    status, _, data = raw_request(
        proxy.url, method, "/v1/files/file-%2Fabc?purpose=batch&x=%20y&x=2", [("Host", "sentinel")], body
    )
    assert status == 200 and data == b'{"ok":true}'
    seen = upstream.seen[0]
    assert seen.method == method
    assert seen.path == "/v1/files/file-%2Fabc"  # percent-encoding preserved, not normalised
    assert seen.query == "purpose=batch&x=%20y&x=2"
    assert seen.body == body


def test_end_to_end_headers_pass_hop_by_hop_do_not(upstream: ScriptedUpstream, proxy: Running) -> None:
    upstream.script(
        "/v1/chat/completions",
        Script(
            headers={
                "Content-Type": "application/json",
                "X-Request-Id": "up-1",
                "Server": "uvicorn-vllm",
                "Set-Cookie": "a=b",
                "Keep-Alive": "timeout=5",
                "Connection": "keep-alive, X-Internal",
                "X-Internal": "secret-hop",
            },
            chunks=[b"{}"],
        ),
    )
    status, headers, _ = raw_request(
        proxy.url,
        "POST",
        "/v1/chat/completions",
        [
            ("Host", "sentinel.example"),
            ("Authorization", "Bearer caller-key"),
            ("Content-Type", "application/json"),
            ("X-Dify-Trace", "t-1"),
            ("Accept", "text/event-stream"),
            ("Accept-Encoding", "identity"),
            ("User-Agent", "Dify/1.0"),
            ("Connection", "keep-alive, X-Hop"),
            ("X-Hop", "must-not-pass"),
            ("TE", "trailers"),
            ("Proxy-Authorization", "Basic c2VjcmV0"),
            ("Upgrade", "h2c"),
            ("Keep-Alive", "timeout=5"),
        ],
        b'{"model":"m","messages":[]}',
    )
    assert status == 200
    seen = upstream.seen[0]
    names = {name.lower() for name, _ in seen.headers}
    assert seen.header("authorization") == "Bearer caller-key"
    assert seen.header("x-dify-trace") == "t-1"
    assert seen.header("accept") == "text/event-stream"
    assert seen.header("accept-encoding") == "identity"
    assert seen.header("user-agent") == "Dify/1.0"
    assert seen.header("content-type") == "application/json"
    assert seen.header("content-length") == str(len(b'{"model":"m","messages":[]}'))
    assert not names & {"x-hop", "te", "proxy-authorization", "upgrade", "keep-alive"}
    assert seen.header("host") == urlsplit(upstream.url).netloc  # the upstream's own authority
    assert seen.header("traceparent") is not None
    response = {name.lower(): value for name, value in headers}
    assert response["x-request-id"] == "up-1" and response["set-cookie"] == "a=b"
    assert response["server"] == "uvicorn-vllm"  # the upstream's, not Sentinel's
    assert "x-internal" not in response and "keep-alive" not in response


def test_configured_upstream_key_replaces_caller_authorization(
    upstream: ScriptedUpstream, start_sentinel: Callable[..., Running], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SENTINEL_UPSTREAM_API_KEY", "sk-upstream-secret")
    upstream.script("/v1/models", Script(chunks=[b'{"data":[]}']))
    proxy = start_sentinel(upstream.url)
    requests.get(proxy.url + "/v1/models", headers={"Authorization": "Bearer caller"}, timeout=30)
    assert upstream.seen[0].header("authorization") == "Bearer sk-upstream-secret"
    record = proxy.record()
    # The record names the caller's key (fingerprint), never the configured upstream key.
    assert record.caller.api_key_id is not None and "secret" not in str(record)


def test_gzip_response_passes_compressed_and_is_parsed(upstream: ScriptedUpstream, proxy: Running) -> None:
    import gzip

    body = b'{"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"zipped"}}]}'
    compressed = gzip.compress(body)
    upstream.script(
        "/v1/chat/completions",
        Script(
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
            chunks=[compressed],
            content_length=True,
        ),
    )
    status, headers, data = raw_request(
        proxy.url, "POST", "/v1/chat/completions", [("Host", "x"), ("Accept-Encoding", "gzip")], b"{}"
    )
    assert status == 200 and data == compressed
    assert dict((k.lower(), v) for k, v in headers)["content-encoding"] == "gzip"
    assert proxy.record().response_text == "zipped"


def test_upstream_base_path_prefix(upstream: ScriptedUpstream, start_sentinel: Callable[..., Running]) -> None:
    """Dify pointed at http://sentinel:8080 with the upstream configured as http://vllm:8000/v1."""
    upstream.script("/v1/chat/completions", Script(chunks=[b'{"choices":[]}']))
    proxy = start_sentinel(upstream.url + "/v1")
    response = requests.post(proxy.url + "/chat/completions", json={"model": "m", "messages": []}, timeout=30)
    assert response.status_code == 200 and upstream.seen[0].path == "/v1/chat/completions"
    assert proxy.record().operation.value == "chat"

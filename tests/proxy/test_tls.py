"""TLS towards the model server through the whole proxy, configured as operators configure it: a
private CA (`upstream.ca_bundle`) and a client certificate (`upstream.client_cert` / `client_key`)
that the model server requires; the health probe uses the same settings."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from sentinel.config import ConfigError
from sentinel.server import build
from tests.conftest import Running, make_settings, wait_until
from tests.proxy.test_upstream import OK, RawServer, certificate_authority, raw_server
from tests.support.gpu_sources import VLLM_METRICS
from tests.support.loop import BackgroundLoop


def test_mutual_tls_upstream_through_the_proxy(
    servers: BackgroundLoop, start_sentinel: Callable[..., Running], tmp_path: Path
) -> None:
    ca_file, server_context = certificate_authority(tmp_path, client=True)
    holder: list[RawServer] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while request := await holder[0].request(reader):
            if request.startswith(b"GET /metrics "):  # vLLM's own metrics, read by the GPU monitor
                body = VLLM_METRICS.encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            else:
                writer.write(OK)

    server = servers.enter(raw_server(handler, server_context))
    holder.append(server)
    proxy = start_sentinel(
        f"https://localhost:{server.port}",
        upstream={
            "ca_bundle": str(ca_file),
            "client_cert": str(tmp_path / "client.pem"),
            "client_key": str(tmp_path / "client.key"),
            "health_interval": 0.05,
        },
        gpu={"interval": 0.05},
    )
    answer = requests.post(proxy.url + "/v1/chat/completions", json={"model": "m", "messages": []}, timeout=30)
    assert answer.status_code == 200 and answer.content == b"{}"
    wait_until(lambda: proxy.metric("sentinel_upstream_up") == 1)  # the probe presents the certificate too
    wait_until(lambda: proxy.metric("sentinel_gpu_source_up", source="vllm") == 1)  # and the GPU monitor
    assert any(r.startswith(b"POST /v1/chat/completions ") for r in server.requests)


def test_unloadable_tls_files_stop_start_up_naming_the_setting(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, "https://localhost:1", upstream={"ca_bundle": str(tmp_path / "nope.pem")})
    with pytest.raises(ConfigError, match=r"upstream.ca_bundle.*nope\.pem"):
        build(settings)


def test_verification_off_is_said_loudly_at_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    build(make_settings(tmp_path, "https://localhost:1", upstream={"tls_verify": False}))
    [warning] = [r for r in caplog.records if "TLS VERIFICATION" in r.getMessage()]
    assert warning.levelname == "WARNING" and "upstream.ca_bundle" in warning.getMessage()

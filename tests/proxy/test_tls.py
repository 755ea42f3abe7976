"""TLS towards the model server through the whole proxy, configured as operators configure it: a
private CA (`upstream.ca_bundle`) and a client certificate (`upstream.client_cert` / `client_key`)
that the model server requires; the health probe uses the same settings."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives import serialization

from sentinel.config import ConfigError
from sentinel.server import build
from tests.conftest import Running, make_settings, wait_until
from tests.proxy.test_upstream import OK, RawServer, certificate_authority, raw_server
from tests.support.gpu_sources import VLLM_METRICS, dcgm_metrics
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


def test_the_upstream_tls_settings_stay_with_the_upstream(
    servers: BackgroundLoop, start_sentinel: Callable[..., Running], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A DCGM exporter on another host is read with the system's CAs and no client certificate: the
    upstream's private CA does not vouch for it and its certificate is not presented to it."""
    ca_file, upstream_context = certificate_authority(tmp_path, client=True)
    dcgm_dir = tmp_path / "dcgm"
    dcgm_dir.mkdir()
    _, dcgm_context = certificate_authority(dcgm_dir)
    # The exporter's certificate is signed by the upstream's CA: trusted only if its settings leaked.
    dcgm_context.load_cert_chain(tmp_path / "server.pem")
    holder: list[RawServer] = []

    async def upstream_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while await holder[0].request(reader):
            writer.write(OK)

    async def dcgm_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while await holder[1].request(reader):
            body = dcgm_metrics([(1000, 2000, 0)]).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    holder.append(servers.enter(raw_server(upstream_handler, upstream_context)))
    dcgm = servers.enter(raw_server(dcgm_handler, dcgm_context))
    holder.append(dcgm)
    proxy = start_sentinel(
        f"https://localhost:{holder[0].port}",
        upstream={
            "ca_bundle": str(ca_file),
            "client_cert": str(tmp_path / "client.pem"),
            "client_key": str(tmp_path / "client.key"),
            "health_interval": 0.05,
        },
        gpu={"interval": 0.05, "sources": ["dcgm"], "dcgm_url": f"https://localhost:{dcgm.port}/metrics"},
    )
    wait_until(lambda: proxy.metric("sentinel_upstream_up") == 1)
    assert proxy.metric("sentinel_upstream_tls_verify") == 1

    def refused() -> bool:  # the exporter was reached, and its certificate not trusted
        return any("dcgm" in r.getMessage() and "CERTIFICATE_VERIFY_FAILED" in r.getMessage() for r in caplog.records)

    wait_until(refused)
    assert proxy.metric("sentinel_gpu_source_up", source="dcgm") == 0
    assert dcgm.requests == []


def test_an_encrypted_client_key_needs_its_password_and_never_prompts(tmp_path: Path) -> None:
    certificate_authority(tmp_path, client=True)
    key = serialization.load_pem_private_key((tmp_path / "client.key").read_bytes(), None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"s3cret"),
        )
    )
    upstream = {"client_cert": str(tmp_path / "client.pem"), "client_key": str(encrypted)}
    # With stdin a terminal that never answers, a prompt would hang: it must fail at once instead.
    with pytest.raises(ConfigError, match=r"client_key_password"):
        build(make_settings(tmp_path, "https://localhost:1", upstream=upstream))
    unlocked = {**upstream, "client_key_password": "s3cret"}
    sentinel = build(make_settings(tmp_path, "https://localhost:1", upstream=unlocked))
    assert sentinel.registry.get_sample_value("sentinel_upstream_tls_verify") == 1


def test_verification_off_is_exported(tmp_path: Path) -> None:
    sentinel = build(make_settings(tmp_path, "https://localhost:1", upstream={"tls_verify": False}))
    assert sentinel.registry.get_sample_value("sentinel_upstream_tls_verify") == 0
    plain = build(make_settings(tmp_path / "plain", "http://localhost:1"))
    assert plain.registry.get_sample_value("sentinel_upstream_tls_verify") is None

"""Shared fixtures: real servers on real sockets, run on a background event loop."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from sentinel.config import Settings, load_settings
from sentinel.interaction import Interaction
from sentinel.server import Sentinel, run_server
from sentinel.sinks.memory import MemorySink
from tests.support.hsm import Hsm, make_token
from tests.support.loop import BackgroundLoop
from tests.support.seaweed import Seaweed, running_seaweed
from tests.support.tsa import Tsa, running_tsa
from tests.support.upstream import ScriptedUpstream, running_upstream

os.environ.setdefault("OPENAI_AGENTS_DISABLE_TRACING", "1")


@pytest.fixture
def servers() -> Iterator[BackgroundLoop]:
    loop = BackgroundLoop()
    try:
        yield loop
    finally:
        loop.close()


@pytest.fixture
def upstream(servers: BackgroundLoop) -> ScriptedUpstream:
    return servers.enter(running_upstream())


class Running:
    """A Sentinel instance under test, with its in-memory sink and metrics registry."""

    def __init__(self, sentinel: Sentinel, sink: MemorySink, servers: BackgroundLoop) -> None:
        self.sentinel = sentinel
        self.sink = sink
        self.servers = servers
        self.url = sentinel.proxy_url
        self.admin_url = sentinel.admin_url
        self.registry: CollectorRegistry = sentinel.registry

    def records(self, count: int = 1, timeout: float = 60.0) -> list[Interaction]:
        return self.servers.run(self.sink.wait_for(count, timeout), timeout + 5)

    def record(self) -> Interaction:
        records = self.records(1)
        assert len(records) == 1, records
        return records[0]

    def metric(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)


def make_settings(tmp_path: Path, upstream_url: str, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "admin_port": 0,
        "data_dir": tmp_path / "data",
        "sinks": {"drain_timeout": 1.0},
    }
    if "sinks" in overrides:
        base["sinks"] = {**base["sinks"], **overrides.pop("sinks")}
    # No scheduled verification in serve unless a test is about it: a check must not start because a test
    # happened to run across :07.
    audit = overrides.pop("audit", {})
    if not any(key.startswith("verify_") for key in audit):
        audit = {"verify_schedule": None, "verify_full_schedule": None, **audit}
    base["audit"] = audit
    upstream = {"url": upstream_url, "health_interval": 3600}
    upstream.update(overrides.pop("upstream", {}))
    base.update(overrides)
    return load_settings(None, upstream=upstream, **base)


@pytest.fixture
def start_sentinel(servers: BackgroundLoop, tmp_path: Path) -> Callable[..., Running]:
    def start(
        upstream_url: str, *, span_processor: Any = None, sinks: Any = (), sinks_: Any = None, **overrides: Any
    ) -> Running:
        """Boot Sentinel in front of `upstream_url`; `sinks_` are sink settings, `sinks` extra sink objects."""
        if sinks_:
            overrides["sinks"] = sinks_
        settings = make_settings(tmp_path, upstream_url, **overrides)
        sink = MemorySink()
        sentinel = servers.enter(run_server(settings, sinks=[sink, *sinks], span_processor=span_processor))
        return Running(sentinel, sink, servers)

    return start


@pytest.fixture
def proxy(upstream: ScriptedUpstream, start_sentinel: Callable[..., Running]) -> Running:
    return start_sentinel(upstream.url)


def wait_until(predicate: Callable[[], bool], timeout: float = 60.0, interval: float = 0.01) -> None:
    """Wait for a state (never a time window): `timeout` is only a safety net, far above what any step
    needs even with both cores busy."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    """A real SeaweedFS (S3 with versioning and Object Lock) for the session; tests make their own buckets."""
    with running_seaweed(tmp_path_factory.mktemp("seaweed")) as server:
        yield server


@pytest.fixture(scope="session")
def tsa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tsa]:
    """A real RFC 3161 time-stamping authority (openssl) for the session; tests that make it fail
    start their own (`running_tsa`)."""
    with running_tsa(tmp_path_factory.mktemp("tsa")) as authority:
        yield authority


ROOT = Path(__file__).resolve().parents[1]
TLOGCHECK = ROOT / "tests" / "interop" / "tlogcheck"
GOCODE = Path("/usr/share/gocode")  # where Debian's golang-*-dev packages put Go sources


@pytest.fixture(scope="session")
def tlogcheck(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/interop/tlogcheck built with Debian's Go and x/mod, offline, once per session."""
    go = shutil.which("go")
    if go is None or not (GOCODE / "src/golang.org/x/mod/sumdb/tlog").is_dir():
        pytest.fail("the interop test needs Go and golang.org/x/mod: run scripts/install-system-deps")
    out = tmp_path_factory.mktemp("tlogcheck")
    binary = out / "tlogcheck"
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPROXY": "off",
        "GOFLAGS": "",
        "GOPATH": f"{out / 'gopath'}:{GOCODE}",
        "GOCACHE": str(out / "cache"),
        "CGO_ENABLED": "0",
    }
    build = subprocess.run(
        [go, "build", "-o", str(binary), "."], cwd=TLOGCHECK, env=env, capture_output=True, text=True, timeout=300
    )
    assert build.returncode == 0, f"go build failed:\n{build.stderr}"
    return binary


@pytest.fixture(scope="session")
def hsm(tmp_path_factory: pytest.TempPathFactory) -> Hsm:
    """A SoftHSM 2 PKCS#11 token with Ed25519 key pairs, for the session (tests/support/hsm.py)."""
    return make_token(tmp_path_factory.mktemp("hsm"))

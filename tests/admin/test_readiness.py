"""`/readyz` tells the truth: 503 with the reason, and `sentinel_ready` 0, whenever the instance cannot
serve calls as configured: strict mode with a full spool or too little disk, anchoring behind, the
model server unreachable (unless told not to care). Real servers, real sockets, a real SQLite bound."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import Running, wait_until
from tests.support.frames import chat_completion
from tests.support.upstream import Script, ScriptedUpstream, refused_port

PROMPT = "x" * 20_000  # each record carries it, encrypted: a 256 KiB spool fills in a few calls
TOKEN = "smt_readiness-token"
"""The metrics token: with it `/readyz` gives the details, without only short codes."""


@pytest.fixture
def start_sentinel(start_sentinel: Callable[..., Running]) -> Callable[..., Running]:
    return lambda upstream_url, **overrides: start_sentinel(upstream_url, metrics={"token": TOKEN}, **overrides)


def _call(proxy: Running) -> requests.Response:
    body = {"model": "deepseek-r1", "messages": [{"role": "user", "content": PROMPT}]}
    return requests.post(proxy.url + "/v1/chat/completions", json=body, timeout=30)


def _ready(proxy: Running, token: str | None = TOKEN) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    answer = requests.get(proxy.admin_url + "/readyz", headers=headers, timeout=30)
    return answer.status_code, answer.json()


def _fill(proxy: Running) -> int:
    """Calls until strict mode stops serving; how many were served in full."""
    for served in range(200):
        try:
            answer = _call(proxy)
        except (
            requests.ConnectionError,
            requests.exceptions.ChunkedEncodingError,
        ):  # the completed record did not fit: the answer is cut, not passed
            return served
        if answer.status_code != 200:
            return served
    raise AssertionError("the spool never filled")


def test_strict_mode_with_a_full_spool_is_not_ready_and_says_why(
    upstream: ScriptedUpstream, start_sentinel: Callable[..., Running]
) -> None:
    upstream.script("/v1/chat/completions", Script(chunks=[chat_completion("ok")]))
    proxy = start_sentinel(upstream.url, audit={"mode": "strict", "spool_max_bytes": 256 * 1024})
    assert _ready(proxy)[0] == 200
    assert proxy.metric("sentinel_ready") == 1
    assert _fill(proxy) >= 1
    refused = _call(proxy)
    assert refused.status_code == 503 and refused.json()["error"]["type"] == "audit_unavailable"
    status, body = _ready(proxy)
    assert status == 503 and body["ready"] is False
    assert body["checks"]["audit"]["ok"] is False and body["checks"]["upstream"]["ok"] is True
    assert body["reason"].startswith("audit: strict mode cannot record: ")
    assert "audit.spool_max_bytes" in body["reason"]
    assert proxy.metric("sentinel_ready") == 0
    assert proxy.metric("sentinel_ready_check", check="audit") == 0
    assert proxy.metric("sentinel_ready_check", check="upstream") == 1
    spool_bytes = proxy.metric("sentinel_audit_spool_bytes")
    assert spool_bytes is not None and 128 * 1024 < spool_bytes <= 256 * 1024
    # A full spool stays full until pruning frees it: not ready however long ago the last write failed.
    proxy.sentinel.audit.trail.write_failure = (0.0, *proxy.sentinel.audit.trail.write_failure[1:])  # type: ignore[union-attr,index]
    assert _ready(proxy)[0] == 503


def test_best_effort_with_a_full_spool_stays_ready_and_says_records_are_lost(
    upstream: ScriptedUpstream, start_sentinel: Callable[..., Running]
) -> None:
    upstream.script("/v1/chat/completions", Script(chunks=[chat_completion("ok")]))
    proxy = start_sentinel(upstream.url, audit={"spool_max_bytes": 256 * 1024})
    for _ in range(40):
        assert _call(proxy).status_code == 200
    wait_until(lambda: (proxy.metric("sentinel_audit_records_lost_total") or 0) > 0)
    status, body = _ready(proxy)
    assert status == 200 and "records are being lost" in body["checks"]["audit"]["detail"]


def test_strict_mode_with_too_little_free_disk_is_not_ready(
    upstream: ScriptedUpstream, start_sentinel: Callable[..., Running]
) -> None:
    proxy = start_sentinel(upstream.url, audit={"mode": "strict", "spool_min_free_bytes": 2**62})
    status, body = _ready(proxy)
    assert status == 503 and "bytes free on the spool's disk" in body["reason"]


def test_strict_mode_is_not_ready_while_anchoring_lags(
    upstream: ScriptedUpstream, start_sentinel: Callable[..., Running]
) -> None:
    proxy = start_sentinel(upstream.url, audit={"mode": "strict", "anchor_lag_max": 900})
    trail = proxy.sentinel.audit.trail  # type: ignore[union-attr]
    trail.anchor_lag_max = 900.0
    trail.anchor_lag = lambda: 901.0  # what AnchorPublisher.lag says when the anchor has been down 15 min
    status, body = _ready(proxy)
    assert status == 503 and "checkpoints not anchored for 901 s" in body["reason"]
    trail.anchor_lag = lambda: 899.0
    assert _ready(proxy)[0] == 200


def test_an_unreachable_upstream_fails_readiness_unless_configured_not_to(
    start_sentinel: Callable[..., Running], tmp_path: Path
) -> None:
    port = refused_port()
    strict = start_sentinel(f"http://127.0.0.1:{port}", upstream={"health_interval": 0.05})
    wait_until(lambda: strict.sentinel.probe.failures >= 3)  # upstream.ready_fail_after
    status, body = _ready(strict)
    assert status == 503 and body["reason"] == f"upstream: http://127.0.0.1:{port} unreachable"
    lenient = start_sentinel(
        f"http://127.0.0.1:{port}",
        upstream={"health_interval": 0.05, "ready_requires_up": False},
        data_dir=tmp_path / "second",
    )
    wait_until(lambda: lenient.sentinel.probe.failures >= 3)
    status, body = _ready(lenient)
    assert status == 200 and body["checks"]["upstream"]["detail"].endswith("unreachable")


def test_without_a_token_readyz_gives_short_codes_and_names_no_host_or_path(
    upstream: ScriptedUpstream, start_sentinel: Callable[..., Running]
) -> None:
    upstream.script("/v1/chat/completions", Script(chunks=[chat_completion("ok")]))
    port = refused_port()
    proxy = start_sentinel(
        f"http://127.0.0.1:{port}",
        upstream={"health_interval": 0.05},
        audit={"mode": "strict", "spool_min_free_bytes": 2**62},
    )
    wait_until(lambda: _ready(proxy)[1]["checks"]["upstream"]["ok"] is False)
    status, body = _ready(proxy, token=None)
    assert status == 503
    assert body == {
        "ready": False,
        "checks": {"upstream": {"ok": False, "code": "unreachable"}, "audit": {"ok": False, "code": "cannot_record"}},
        "reason": "upstream: unreachable; audit: cannot_record",
    }
    assert _ready(proxy, token="wrong")[1] == body
    details = _ready(proxy)[1]["reason"]
    assert str(port) in details and "spool" in details  # the details, for a caller holding the token

"""Optional bearer protection of `/metrics`, `/docs` and `/openapi.json` on the admin port, through the
real server; and the Prometheus scrape config the docs give, run by the real Prometheus."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from sentinel.admin.auth import hash_token
from tests.conftest import Running
from tests.support.prometheus import running_prometheus
from tests.support.upstream import ScriptedUpstream

TOKEN = "smt_metrics-scrape-token"


def _start(start_sentinel: Callable[..., Running], upstream: ScriptedUpstream, tmp_path: Path) -> Running:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(f"tokens:\n  - {{name: alice, role: operator, sha256: {hash_token('t-alice')}}}\n")
    token_file = tmp_path / "metrics-token"
    token_file.write_text(TOKEN + "\n")
    return start_sentinel(upstream.url, admin_tokens_file=str(tokens), metrics={"token_file": str(token_file)})


@pytest.mark.parametrize("path", ["/metrics", "/docs", "/openapi.json"])
def test_protected_paths_need_the_metrics_token_or_an_admin_token(
    start_sentinel: Callable[..., Running], upstream: ScriptedUpstream, tmp_path: Path, path: str
) -> None:
    proxy = _start(start_sentinel, upstream, tmp_path)
    url = proxy.admin_url + path

    def get(token: str | None) -> requests.Response:
        return requests.get(url, headers={"Authorization": f"Bearer {token}"} if token else {}, timeout=30)

    refused = get(None)
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
    assert TOKEN not in refused.text
    assert get("wrong").status_code == 401
    assert get(TOKEN).status_code == 200
    assert get("t-alice").status_code == 200
    assert requests.get(url, headers={"Authorization": f"Basic {TOKEN}"}, timeout=30).status_code == 401
    assert proxy.metric("sentinel_admin_auth_failures_total", reason="invalid") == 2
    # Health stays open: load balancers and orchestrators probe without credentials.
    assert requests.get(proxy.admin_url + "/healthz", timeout=30).status_code == 200
    assert requests.get(proxy.admin_url + "/readyz", timeout=30).status_code == 200


def test_open_without_a_metrics_token(proxy: Running) -> None:
    assert requests.get(proxy.admin_url + "/metrics", timeout=30).status_code == 200
    assert requests.get(proxy.admin_url + "/openapi.json", timeout=30).status_code == 200


def test_prometheus_scrapes_with_the_documented_authorization_config(
    start_sentinel: Callable[..., Running], upstream: ScriptedUpstream, tmp_path: Path
) -> None:
    proxy = _start(start_sentinel, upstream, tmp_path)
    target = proxy.admin_url.removeprefix("http://")
    without = {"job_name": "no-credentials", "metrics_path": "/metrics", "static_configs": [{"targets": [target]}]}
    with running_prometheus(
        tmp_path / "prometheus",
        target,
        [],
        scrape={"authorization": {"type": "Bearer", "credentials_file": str(tmp_path / "metrics-token")}},
        extra_jobs=[without],
    ) as prometheus:
        assert prometheus.wait_for('up{job="sentinel"}', lambda v: v == 1) == 1
        assert prometheus.wait_for('up{job="no-credentials"}', lambda v: v == 0) == 0
        assert prometheus.wait_for('sentinel_build_info{job="sentinel"}', lambda v: v == 1) == 1

"""`GET /report` and `POST /report/verify` on a running Sentinel's admin port: auditors only, the report
signed and recorded before it is sent, and failed attempts showing up in the next report."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

import orjson
import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from sentinel.admin.auth import hash_token
from tests.conftest import Running, wait_until
from tests.support.frames import SSE_HEADERS, vllm_chat_stream
from tests.support.upstream import Script, ScriptedUpstream

AUDITOR, OPERATOR = "sat_auditor-token", "sat_operator-token"


def test_auditors_get_signed_reports_others_do_not(
    upstream: ScriptedUpstream, start_sentinel: Callable[..., Running], tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(
        "tokens:\n"
        f"  - {{name: alice, role: auditor, sha256: {hash_token(AUDITOR)}}}\n"
        f"  - {{name: olaf, role: operator, sha256: {hash_token(OPERATOR)}}}\n"
    )
    upstream.script("/v1/chat/completions", Script(headers=SSE_HEADERS, chunks=vllm_chat_stream(["r"], ["ok"])))
    sentinel = start_sentinel(upstream.url, admin_tokens_file=tokens, instance_id="api-test")
    logins = sentinel.sentinel.extras["auth"].logins
    start = logins.clock()
    logins.clock = lambda: start  # failed logins stay in one window until the test ends it
    answer = requests.post(
        f"{sentinel.url}/v1/chat/completions",
        json={
            "model": "deepseek-r1",
            "stream": True,
            "user": "patient-1",
            "messages": [{"role": "user", "content": "hi"}],
        },
        headers={"Authorization": "Bearer caller-key"},
        timeout=10,
    )
    assert answer.status_code == 200
    url = f"{sentinel.admin_url}/report"

    assert requests.get(url, timeout=10).status_code == 401
    forbidden = requests.get(url, headers={"Authorization": f"Bearer {OPERATOR}"}, timeout=10)
    assert forbidden.status_code == 403
    logins.clock = lambda: start + logins.window  # the window ends: one record for the client, count 2

    def recorded() -> bool:
        response = requests.get(
            url, params={"from": "1h", "format": "json"}, headers={"Authorization": f"Bearer {AUDITOR}"}, timeout=60
        )
        assert response.status_code == 200, response.text
        body = orjson.loads(response.content)
        recorded.last = (response, body)  # type: ignore[attr-defined]
        return bool(body["activity"]["totals"]["calls"] == 1 and body["anomalies"]["admin_auth_failures"] >= 1)

    wait_until(recorded, timeout=20, interval=0.3)
    response, report = recorded.last  # type: ignore[attr-defined]
    assert response.headers["content-type"] == "application/json"
    assert report["generated_by"] == "admin-api:alice"
    assert response.headers["X-Sentinel-Report-Id"] == report["report_id"]
    assert response.headers["X-Sentinel-Report-Key"].startswith("sk-")
    (failed,) = report["anomalies"]["findings"]  # both attempts came from one client: one record, count 2
    assert failed["rule"] == "anomaly.admin_auth_failed"
    assert failed["evidence"]["client"] == "client:127.0.0.1" and failed["evidence"]["paths"] == ["/report"]
    # One record per client per window (sentinel/admin/logins.py): the report counts the attempts it holds.
    assert failed["evidence"]["attempts"] == 2 and report["anomalies"]["admin_auth_failures"] == 2
    assert report["integrity"]["ok"] is True
    # `sentinel serve` recorded the settings it started with; the report states those, not its own.
    stated = report["transmission"]["settings"]
    assert stated["source"] == "audit trail" and len(stated["records"]) == 1
    assert "nothing was recorded for the period before that" in stated["statement"]  # it started in the period

    # At once: the report_issued record is durable in the writer's spool before the report is sent.
    check = requests.post(
        f"{url}/verify", data=response.content, headers={"Authorization": f"Bearer {AUDITOR}"}, timeout=30
    )
    assert check.status_code == 200 and check.json()["ok"] is True, check.text
    tampered = requests.post(
        f"{url}/verify", data=response.content + b" ", headers={"Authorization": f"Bearer {AUDITOR}"}, timeout=30
    )
    assert tampered.json()["ok"] is False

    pdf = requests.get(
        url, params={"from": "1h", "format": "pdf"}, headers={"Authorization": f"Bearer {AUDITOR}"}, timeout=60
    )
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF-")
    assert pdf.headers["content-disposition"].endswith('.pdf"')
    check = requests.post(f"{url}/verify", data=pdf.content, headers={"Authorization": f"Bearer {AUDITOR}"}, timeout=30)
    assert check.json()["ok"] is True, check.text  # a PDF just returned verifies immediately


def test_admin_verify_trusts_only_the_pinned_keys(
    upstream: ScriptedUpstream, start_sentinel: Callable[..., Running], tmp_path: Path
) -> None:
    """With `audit.pinned_keys`, `GET /audit/verify` trusts the pin file alone: the instance's own
    signing key, not pinned there, is a finding and the trail is not declared intact."""
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(f"tokens:\n  - {{name: alice, role: auditor, sha256: {hash_token(AUDITOR)}}}\n")
    foreign = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    pins = tmp_path / "pins.txt"
    pins.write_text(f"sk-20260101-foreign {base64.b64encode(foreign).decode()}\n")
    upstream.script("/v1/chat/completions", Script(headers=SSE_HEADERS, chunks=vllm_chat_stream(["r"], ["ok"])))
    sentinel = start_sentinel(
        upstream.url, admin_tokens_file=tokens, instance_id="pin-test", audit={"pinned_keys": str(pins)}
    )
    answer = requests.post(
        f"{sentinel.url}/v1/chat/completions",
        json={"model": "deepseek-r1", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    )
    assert answer.status_code == 200

    def checked() -> bool:
        response = requests.get(
            f"{sentinel.admin_url}/audit/verify", headers={"Authorization": f"Bearer {AUDITOR}"}, timeout=30
        )
        assert response.status_code == 200, response.text
        checked.last = response.json()  # type: ignore[attr-defined]
        return bool(checked.last["records_checked"] >= 1)  # type: ignore[attr-defined]

    wait_until(checked, timeout=20, interval=0.3)
    body = checked.last  # type: ignore[attr-defined]
    assert body["ok"] is False
    assert body["keys"]["pinned"] is True and body["keys"]["trusted_kids"] == ["sk-20260101-foreign"]
    assert [f["kind"] for f in body["keys"]["findings"]] == ["unpinned_key"]

"""The audit trail behind the real proxy: both modes, the embedded store, and Elasticsearch going away."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import requests

from sentinel.audit.kek import LocalKeyFile
from sentinel.audit.keyring import KeyRing
from sentinel.audit.record import decrypt
from tests.conftest import Running, wait_until
from tests.support.elasticsearch import FakeElasticsearch, running_elasticsearch
from tests.support.frames import SSE_HEADERS, chat_completion, vllm_chat_stream
from tests.support.loop import BackgroundLoop
from tests.support.upstream import Script, ScriptedUpstream, Seen


def chat(n: int, stream: bool = False) -> dict[str, Any]:
    return {
        "model": "deepseek-r1",
        "messages": [{"role": "user", "content": f"request {n}"}],
        "stream": stream,
        "user": f"user-{n}",
    }


def spool_kinds(data_dir: Path) -> list[tuple[str, str]]:
    """(kind, interaction id) of every call record durable in the spool right now (events, such as the
    settings recorded at start, left out)."""
    db = sqlite3.connect(f"file:{data_dir / 'audit' / 'spool.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT kind, body FROM records ORDER BY seq").fetchall()
    finally:
        db.close()
    return [
        (kind, (orjson.loads(body).get("interaction") or {}).get("id", "")) for kind, body in rows if kind != "event"
    ]


def open_records(data_dir: Path, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Decrypt documents with the deployment's KEK and the keys stored beside them."""
    db = sqlite3.connect(data_dir / "audit" / "store.db")
    from sentinel.audit.keyring import WrappedKey

    keys = [WrappedKey.from_dict(orjson.loads(b)) for (b,) in db.execute("SELECT body FROM keys")]
    db.close()
    ring = KeyRing(LocalKeyFile.load(data_dir / "keys" / "kek.key"), keys=keys)
    return [decrypt(ring, doc) for doc in docs]


def stored(data_dir: Path, kind: str = "interaction") -> list[dict[str, Any]]:
    db = sqlite3.connect(data_dir / "audit" / "store.db")
    rows = [orjson.loads(b) for (b,) in db.execute("SELECT body FROM records WHERE kind = ? ORDER BY seq", (kind,))]
    db.close()
    return rows


def test_best_effort_records_every_call_encrypted(
    upstream: ScriptedUpstream, start_sentinel: Callable[..., Running], tmp_path: Path
) -> None:
    upstream.script(
        "/v1/chat/completions",
        Script(headers=SSE_HEADERS, chunks=vllm_chat_stream(["thinking"], ["secret", " answer"])),
    )
    proxy = start_sentinel(upstream.url)
    for n in range(5):
        assert requests.post(proxy.url + "/v1/chat/completions", json=chat(n, stream=True), timeout=10).ok
    data_dir = tmp_path / "data"
    wait_until(lambda: (data_dir / "audit" / "store.db").exists() and len(stored(data_dir)) == 5, timeout=30)
    raw = (data_dir / "audit" / "store.db").read_bytes() + (data_dir / "audit" / "spool.db").read_bytes()
    for secret in (b"request 3", b"secret answer", b"thinking", b"user-3"):
        assert secret not in raw  # content only ever stored encrypted
    docs = stored(data_dir)
    assert [d["interaction"]["usage"]["output_tokens"] for d in docs] == [34] * 5
    contents = open_records(data_dir, docs)
    assert sorted(c["request_messages"][0]["content"] for c in contents) == [f"request {n}" for n in range(5)]
    assert {c["response_text"] for c in contents} == {"secret answer"}
    assert proxy.metric("sentinel_audit_records_written_total") == 5 + 1  # and the settings recorded at start
    wait_until(lambda: proxy.metric("sentinel_audit_spool_records") == 0, timeout=30)


def test_strict_mode_records_before_forwarding_and_before_the_last_byte(
    upstream: ScriptedUpstream, start_sentinel: Callable[..., Running], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    durable_when_forwarded: list[list[tuple[str, str]]] = []

    def check(seen: Seen) -> None:  # runs when the request reaches the upstream
        durable_when_forwarded.append(spool_kinds(data_dir))

    upstream.script(
        "/v1/chat/completions", Script(headers=SSE_HEADERS, chunks=vllm_chat_stream([], ["a", "b"]), before=check)
    )
    proxy = start_sentinel(upstream.url, audit={"mode": "strict"})
    with requests.post(
        proxy.url + "/v1/chat/completions", json=chat(1, stream=True), stream=True, timeout=10
    ) as response:
        body = b"".join(response.iter_content(chunk_size=None))
        after_last_byte = spool_kinds(data_dir)  # no waiting: it must already be durable
    assert body.endswith(b"data: [DONE]\n\n")
    (before,) = durable_when_forwarded
    assert [kind for kind, _ in before] == ["interaction_started"]
    interaction_id = before[0][1]
    assert after_last_byte == [("interaction_started", interaction_id), ("interaction", interaction_id)]
    record = proxy.record()  # the recorder reuses the journal's record for metrics and sinks
    assert record.id == interaction_id and record.response_text == "ab"


def test_strict_mode_records_failed_calls_too(start_sentinel: Callable[..., Running], tmp_path: Path) -> None:
    from tests.support.upstream import refused_port

    proxy = start_sentinel(f"http://127.0.0.1:{refused_port()}", audit={"mode": "strict"})
    assert requests.post(proxy.url + "/v1/chat/completions", json=chat(1), timeout=60).status_code == 502
    proxy.record()
    kinds = [kind for kind, _ in spool_kinds(tmp_path / "data")]
    assert kinds == ["interaction_started", "interaction"]


def test_strict_mode_refuses_what_it_cannot_record(
    upstream: ScriptedUpstream, start_sentinel: Callable[..., Running], tmp_path: Path
) -> None:
    upstream.script("/v1/chat/completions", Script(chunks=[chat_completion("hi")]))
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "audit").write_text("not a directory")  # the spool cannot be created: recording is impossible
    proxy = start_sentinel(upstream.url, audit={"mode": "strict"})
    response = requests.post(proxy.url + "/v1/chat/completions", json=chat(1), timeout=10)
    assert response.status_code == 503 and response.json()["error"]["type"] == "audit_unavailable"
    assert upstream.seen == []  # fail closed: nothing unrecorded reaches the model
    assert requests.get(proxy.admin_url + "/readyz", timeout=5).status_code == 503
    assert proxy.metric("sentinel_audit_refused_total") == 1
    assert proxy.record().error_type == "audit_unavailable"


def test_best_effort_serves_and_counts_what_it_cannot_record(
    upstream: ScriptedUpstream, start_sentinel: Callable[..., Running], tmp_path: Path
) -> None:
    upstream.script("/v1/chat/completions", Script(chunks=[chat_completion("hi")]))
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "audit").write_text("not a directory")
    proxy = start_sentinel(upstream.url)
    for n in range(3):
        assert requests.post(proxy.url + "/v1/chat/completions", json=chat(n), timeout=10).status_code == 200
    wait_until(lambda: proxy.metric("sentinel_audit_records_lost_total") == 3)


def test_elasticsearch_down_then_back_loses_and_duplicates_nothing(
    servers: BackgroundLoop, upstream: ScriptedUpstream, start_sentinel: Callable[..., Running]
) -> None:
    es: FakeElasticsearch = servers.enter(running_elasticsearch())
    upstream.script("/v1/chat/completions", Script(chunks=[chat_completion("ok")], content_length=True))
    proxy = start_sentinel(upstream.url, elasticsearch={"url": es.url})

    def docs() -> dict[str, Any]:
        return es.indices["sentinel-audit"].docs if "sentinel-audit" in es.indices else {}

    for n in range(10):
        assert requests.post(proxy.url + "/v1/chat/completions", json=chat(n), timeout=10).ok
    wait_until(lambda: len(docs()) >= 10, timeout=30)
    es.down = True  # the cluster goes away under load
    for n in range(10, 60):
        assert requests.post(proxy.url + "/v1/chat/completions", json=chat(n), timeout=10).ok
    wait_until(lambda: (proxy.metric("sentinel_audit_ship_failures_total") or 0) >= 1, timeout=30)
    assert (proxy.metric("sentinel_audit_spool_records") or 0) > 0
    es.lose_bulk_responses = 1  # then a write lands but its answer is lost: the retry must not duplicate
    es.down = False
    shipper = proxy.sentinel.audit.shipper  # type: ignore[union-attr]
    assert shipper is not None

    def drained() -> bool:
        # Retry now rather than after the backoff (1 s doubling), which depends on how long the outage took.
        servers.loop.call_soon_threadsafe(shipper.nudge)
        # Every record is in the spool (they are written after the responses) and none is left unshipped.
        written = proxy.metric("sentinel_audit_records_written_total")
        return written == 60 + 1 and proxy.metric("sentinel_audit_spool_records") == 0  # + the settings at start

    wait_until(drained, timeout=30)
    interactions = [d for d in docs().values() if d["kind"] == "interaction"]
    assert len(interactions) == 60 == len({d["interaction"]["id"] for d in interactions})
    assert sorted(d["seq"] for d in docs().values()) == list(range(1, len(docs()) + 1))
    report = servers.run(proxy.sentinel.audit.verify())  # type: ignore[union-attr]
    assert report.ok, report.findings
    assert report.records_checked == len(docs())


def test_admin_api_roles_decrypt_with_reason_and_failed_logins(
    upstream: ScriptedUpstream, start_sentinel: Callable[..., Running], tmp_path: Path
) -> None:
    from sentinel.admin.auth import hash_token

    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(
        f"tokens:\n  - {{name: alice, role: auditor, sha256: {hash_token('t-alice')}}}\n"
        f"  - {{name: olga, role: operator, sha256: {hash_token('t-olga')}}}\n"
    )
    upstream.script("/v1/chat/completions", Script(chunks=[chat_completion("the answer")]))
    proxy = start_sentinel(upstream.url, admin_tokens_file=str(tokens))
    logins = proxy.sentinel.extras["auth"].logins
    logins.clock = lambda: 1_800_000_000.0  # failed logins stay in one window until the test ends it
    before = time.time()
    requests.post(proxy.url + "/v1/chat/completions", json=chat(7), timeout=10)
    record = proxy.record()
    url = proxy.admin_url + "/audit/records"

    def get(path: str, token: str | None = None, **params: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return requests.get(url + path, headers=headers, params=params, timeout=10)

    wait_until(lambda: len(get("", "t-olga").json().get("records", [])) >= 1, timeout=30)
    assert get("").status_code == 401 and get("", "wrong").status_code == 401
    listed = get("", "t-olga", user="user-7").json()["records"]
    assert [r["interaction"]["id"] for r in listed] == [record.id] and "encrypted" not in listed[0]
    assert get("", "t-olga", user="someone-else").json()["records"] == []
    assert get(f"/{record.id}", "t-olga", decrypt="true", reason="curious").status_code == 403
    assert get(f"/{record.id}", "t-alice", decrypt="true").status_code == 422  # no reason, no content
    shown = get(f"/{record.id}", "t-alice", decrypt="true", reason="ticket 1234").json()
    assert shown["content"]["response_text"] == "the answer" and shown["content"]["caller_user"] == "user-7"
    assert get("/../verify", "t-olga").json()["ok"] is True
    by_type: dict[str, list[dict[str, Any]]] = {}

    def events_shipped() -> bool:
        by_type.clear()
        for event in get("", "t-alice", kind="event", limit=50).json()["records"]:
            by_type.setdefault(event["event"]["type"], []).append(event["event"])
        return "content_access" in by_type and len(by_type.get("admin_auth_failed", [])) >= 1

    logins.clock = lambda: 1_800_000_000.0 + 60  # the window ends: its one record is written
    wait_until(events_shipped, timeout=30)
    assert [e["actor"] for e in by_type["content_access"]] == ["admin-api:alice"]
    assert by_type["content_access"][0]["details"]["interaction"] == record.id
    [failed] = by_type["admin_auth_failed"]
    assert failed["details"]["reasons"] == {"missing": 1, "invalid": 1, "forbidden": 1}
    assert proxy.metric("sentinel_admin_auth_failures_total", reason="invalid") == 1
    # The stated reason is kept, encrypted, with the access event.
    doc = next(d for d in stored(tmp_path / "data", "event") if d["event"]["type"] == "content_access")
    assert open_records(tmp_path / "data", [doc])[0]["reason"] == "ticket 1234"
    assert before <= doc["recorded_at"] <= time.time()  # recorded when the access happened, during this test


def test_policy_changes_are_audit_events(
    upstream: ScriptedUpstream, start_sentinel: Callable[..., Running], tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text('rules:\n  - name: no-secrets\n    patterns: ["project bluebird"]\n    action: block\n')
    start_sentinel(upstream.url, policy={"file": str(policy), "reload_interval": 0.1})  # loaded at start
    # The edit, saved the way editors do (a new file renamed over the old one): the watcher never
    # sees it half-written, however its next look lines up with the write.
    edited = tmp_path / "policy.yaml.new"
    edited.write_text(
        'rules:\n  - name: no-secrets\n    patterns: ["project bluebird", "red fox"]\n    action: block\n'
    )
    os.replace(edited, policy)
    data_dir = tmp_path / "data"

    def changes() -> list[dict[str, Any]]:
        if not (data_dir / "audit" / "store.db").exists():
            return []
        return [d for d in stored(data_dir, "event") if d["event"]["type"] == "policy_change"]

    wait_until(lambda: len(changes()) == 2, timeout=30)
    start, edit = changes()
    assert start["event"]["details"]["outcome"] == edit["event"]["details"]["outcome"] == "applied"
    assert edit["event"]["details"]["old_digest"] == start["event"]["details"]["new_digest"]
    assert "red fox" not in orjson.dumps(edit).decode()  # the diff quotes the rules: stored encrypted
    assert (
        "+" in open_records(data_dir, [edit])[0]["private_diff"]
        and "red fox" in open_records(data_dir, [edit])[0]["private_diff"]
    )

"""`sentinel keys` and `sentinel audit` as operators and auditors run them, against a running Sentinel."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import requests

from tests.conftest import Running, wait_until
from tests.support.frames import chat_completion
from tests.support.upstream import Script, ScriptedUpstream


def sentinel(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
    return subprocess.run(
        [sys.executable, "-m", "sentinel", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def kids(data_dir: Path) -> list[str]:
    db = read_only(data_dir / "audit" / "spool.db")
    rows = [orjson.loads(b) for (b,) in db.execute("SELECT body FROM records WHERE kind = 'interaction' ORDER BY seq")]
    db.close()
    return [doc["encrypted"]["response_text"]["kid"] for doc in rows]


def stored_interactions(data_dir: Path) -> int:
    db = read_only(data_dir / "audit" / "store.db")
    try:
        count: int = db.execute("SELECT COUNT(*) FROM records WHERE kind = 'interaction'").fetchone()[0]
        return count
    finally:
        db.close()


def test_keys_and_audit_commands(
    upstream: ScriptedUpstream, start_sentinel: Callable[..., Running], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    upstream.script("/v1/chat/completions", Script(chunks=[chat_completion("classified")]))
    proxy = start_sentinel(upstream.url, audit={"checkpoint_interval": 2})
    audit = proxy.sentinel.audit
    assert audit is not None and audit.keyring is not None
    server_keys = audit.keyring

    def call(n: int) -> None:
        body = {"model": "m", "messages": [{"role": "user", "content": f"q{n}"}], "user": "carol"}
        assert requests.post(proxy.url + "/v1/chat/completions", json=body, timeout=10).ok

    call(1)
    wait_until(lambda: len(kids(data_dir)) == 1, timeout=30)
    (old_kid,) = kids(data_dir)
    rotated = sentinel(data_dir, "keys", "rotate")
    assert rotated.returncode == 0, rotated.stderr
    new_kid = rotated.stdout.split("New data key ")[1].split()[0]
    assert new_kid.startswith("dk-") and new_kid != old_kid

    # The running server switches by itself: it looks for new keys every few seconds (0.5 s here).
    wait_until(lambda: server_keys._current == new_kid, timeout=30)
    call(2)
    call(3)
    wait_until(lambda: len(kids(data_dir)) == 3, timeout=30)
    assert kids(data_dir) == [old_kid, new_kid, new_kid]

    wait_until(lambda: stored_interactions(data_dir) == 3, timeout=30)  # shipped to the store
    searched = sentinel(data_dir, "audit", "search", "--kind", "interaction", "--json")
    assert searched.returncode == 0 and searched.stdout.count('"doc_id"') == 3, searched.stderr
    found = orjson.loads(
        sentinel(data_dir, "audit", "search", "--user", "carol", "--kind", "interaction", "--json").stdout
    )
    assert len(found) == len(kids(data_dir)) and "encrypted" not in found[0]
    assert orjson.loads(sentinel(data_dir, "audit", "search", "--user", "dave", "--json").stdout) == []

    record_id = found[-1]["doc_id"]  # the oldest: encrypted under the rotated-away key
    refused = sentinel(data_dir, "audit", "show", record_id, "--decrypt")
    assert refused.returncode == 2 and "--reason" in refused.stderr
    shown = sentinel(data_dir, "audit", "show", record_id, "--decrypt", "--reason", "subpoena 7")
    assert shown.returncode == 0, shown.stderr
    assert orjson.loads(shown.stdout)["content"]["response_text"] == "classified"

    rewrapped = sentinel(data_dir, "keys", "rewrap")
    assert rewrapped.returncode == 0, rewrapped.stderr
    old_kek = rewrapped.stdout.split("Old KEK ")[1].split()[0]
    assert sentinel(data_dir, "keys", "retire", old_kek).returncode == 0
    assert old_kek not in (data_dir / "keys" / "kek.key").read_text()
    after = sentinel(data_dir, "audit", "show", record_id, "--decrypt", "--reason", "after rewrap")
    assert after.returncode == 0, after.stderr
    assert orjson.loads(after.stdout)["content"]["response_text"] == "classified"

    verified = sentinel(data_dir, "audit", "verify", "--json")
    assert verified.returncode == 0, verified.stdout
    report = orjson.loads(verified.stdout)
    chains = {i["instance"] for i in report["instances"]}
    assert any(c.endswith(".cli") for c in chains)  # the CLI's own events (access, rotation) are chained too
    events = orjson.loads(sentinel(data_dir, "audit", "search", "--kind", "event", "--json").stdout)
    assert {"key_rotation", "content_access", "kek_rewrap", "kek_retired"} <= {e["event"]["type"] for e in events}

    # Pinning keys as documented: the pin file verifies the untouched trail; a file that is not one is a
    # usage error (exit 2) naming the line, never a traceback and never the "tampered" status.
    pins = tmp_path / "pins.txt"
    shown_pins = sentinel(data_dir, "keys", "show", "--public")
    assert shown_pins.returncode == 0, shown_pins.stderr
    pins.write_text(shown_pins.stdout)
    assert [line.split()[0][:3] for line in shown_pins.stdout.splitlines() if not line.startswith("#")] == ["sk-"]
    pinned = sentinel(data_dir, "audit", "verify", "--public-key", str(pins))
    assert pinned.returncode == 0, pinned.stdout + pinned.stderr
    garbage = tmp_path / "not-pins.txt"
    garbage.write_text("Key-encryption keys in /somewhere: kek-1 (active)\n")
    refused_pins = sentinel(data_dir, "audit", "verify", "--public-key", str(garbage))
    assert refused_pins.returncode == 2 and "not-pins.txt:1 is not a pinned key line" in refused_pins.stderr
    assert "Traceback" not in refused_pins.stderr

    db = sqlite3.connect(data_dir / "audit" / "store.db")
    db.execute("DELETE FROM records WHERE doc_id = ?", (found[-2]["doc_id"],))  # call 2's: one in the middle
    db.commit()
    db.close()
    tampered = sentinel(data_dir, "audit", "verify")
    assert tampered.returncode == 1 and "DELETED" in tampered.stdout


def test_serve_refuses_a_key_file_that_cannot_open_the_data(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
    assert (
        subprocess.run(
            [sys.executable, "-m", "sentinel", "keys", "init", "--data-dir", str(data_dir)],
            env=env,
            capture_output=True,
            timeout=60,
        ).returncode
        == 0
    )
    # Some data keys get made and wrapped under this KEK ...
    assert sentinel(data_dir, "keys", "rotate").returncode == 0
    # ... then the key file is replaced by another one.
    (data_dir / "keys" / "kek.key").unlink()
    assert sentinel(data_dir, "keys", "init").returncode == 0
    env["SENTINEL_UPSTREAM_URL"] = "http://127.0.0.1:9"
    result = subprocess.run(
        [sys.executable, "-m", "sentinel", "serve", "--data-dir", str(data_dir), "--port", "0", "--admin-port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "wrapped only by key-encryption key(s) kek-" in result.stderr and "Traceback" not in result.stderr


def test_a_second_serve_on_the_same_data_dir_refuses(
    upstream: ScriptedUpstream, start_sentinel: Callable[..., Running], tmp_path: Path
) -> None:
    """One writer per chain: two instances on one data directory would both write `instance:seq`."""
    data_dir = tmp_path / "data"
    first = start_sentinel(upstream.url)
    assert first.sentinel.audit is not None
    second = subprocess.run(
        [
            sys.executable,
            "-m",
            "sentinel",
            "serve",
            "--data-dir",
            str(data_dir),
            "--upstream",
            upstream.url,
            "--port",
            "0",
            "--admin-port",
            "0",
        ],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")},
        timeout=120,
    )
    assert second.returncode == 2, second.stderr
    assert f"another sentinel serve (pid {os.getpid()}) is writing the audit trail in {data_dir}" in second.stderr
    assert "Traceback" not in second.stderr
    # The first one goes on recording.
    upstream.script("/v1/chat/completions", Script(chunks=[chat_completion("still here")]))
    body = {"model": "m", "messages": [{"role": "user", "content": "q"}]}
    assert requests.post(first.url + "/v1/chat/completions", json=body, timeout=30).ok
    wait_until(lambda: len(kids(data_dir)) == 1, timeout=30)

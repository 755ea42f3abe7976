"""A restore drill proves the audit trail restores: the restored store re-verifies and its records decrypt
with the separately kept key-encryption key (sentinel/audit/drill.py, on by default)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import requests

from tests.conftest import Running, wait_until
from tests.support.forgery import forge
from tests.support.frames import chat_completion
from tests.support.upstream import Script, ScriptedUpstream


def sentinel(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
    env["SENTINEL_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [sys.executable, "-m", "sentinel", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_drill_verifies_and_decrypts_the_restored_audit_trail(
    upstream: ScriptedUpstream, start_sentinel: Callable[..., Running], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    upstream.script("/v1/chat/completions", Script(chunks=[chat_completion("kept safe")]))
    proxy = start_sentinel(upstream.url)
    before = time.time()
    for n in range(12):
        body = {"model": "m", "messages": [{"role": "user", "content": f"q{n}"}]}
        assert requests.post(proxy.url + "/v1/chat/completions", json=body, timeout=10).ok
    store = data_dir / "audit" / "store.db"
    wait_until(
        lambda: (
            store.exists()
            and sqlite3.connect(store).execute("SELECT COUNT(*) FROM records WHERE kind = 'interaction'").fetchone()[0]
            == 12
        ),
        timeout=30,
    )

    assert sentinel(data_dir, "backup", "init-key").returncode == 0
    ran = sentinel(data_dir, "backup", "run")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    drilled = sentinel(data_dir, "drill", "run")
    assert drilled.returncode == 0, drilled.stdout + drilled.stderr
    report = orjson.loads(sorted((data_dir / "backup" / "drills").glob("*.json"))[-1].read_bytes())
    audit = next(c for c in report["checks"] if c["name"] == "audit trail")
    assert audit["passed"], audit["detail"]
    # The 12 calls and the settings `sentinel serve` recorded when it started.
    assert "chain(s) verify" in audit["detail"] and "13 sampled records decrypt" in audit["detail"]
    # The newest recovered record is one this test wrote: RPO is at most the time since then.
    assert report["rpo_basis"] == "newest recovered record"
    assert report["rpo_seconds"] is not None and 0 <= report["rpo_seconds"] <= report["finished"] - before

    # Tamper with the live store, back it up again: the drill must now fail on the audit trail.
    db = sqlite3.connect(store)
    db.execute("DELETE FROM records WHERE seq = 5")
    db.commit()
    db.close()
    assert sentinel(data_dir, "backup", "run").returncode == 0
    failed = sentinel(data_dir, "drill", "run")
    assert failed.returncode != 0
    report = orjson.loads(sorted((data_dir / "backup" / "drills").glob("*.json"))[-1].read_bytes())
    audit = next(c for c in report["checks"] if c["name"] == "audit trail")
    assert not audit["passed"] and "deleted" in audit["detail"]


def test_a_drill_against_pinned_keys_fails_on_a_key_added_to_the_store(
    upstream: ScriptedUpstream, start_sentinel: Callable[..., Running], tmp_path: Path
) -> None:
    """The operator adds a signing key of their own to the store and re-signs every checkpoint with it:
    a drill trusting the restored store's own keys passes (and says that is what it trusted), a drill
    against the pinned keys fails naming the key. A pin file that is not one is exit status 2."""
    data_dir = tmp_path / "data"
    upstream.script("/v1/chat/completions", Script(chunks=[chat_completion("kept safe")]))
    proxy = start_sentinel(upstream.url)
    for n in range(3):
        body = {"model": "m", "messages": [{"role": "user", "content": f"q{n}"}]}
        assert requests.post(proxy.url + "/v1/chat/completions", json=body, timeout=10).ok
    store = data_dir / "audit" / "store.db"
    wait_until(
        lambda: (
            store.exists()
            and sqlite3.connect(store).execute("SELECT COUNT(*) FROM records WHERE kind = 'interaction'").fetchone()[0]
            == 3
        ),
        timeout=30,
    )
    pins = tmp_path / "pins.txt"
    pins.write_text(sentinel(data_dir, "keys", "show", "--public").stdout)
    assert sentinel(data_dir, "backup", "init-key").returncode == 0
    assert sentinel(data_dir, "backup", "run").returncode == 0

    def audit_check(*args: str) -> tuple[int, dict[str, object]]:
        drilled = sentinel(data_dir, "drill", "run", *args)
        report = orjson.loads(sorted((data_dir / "backup" / "drills").glob("*.json"))[-1].read_bytes())
        check = next(c for c in report["checks"] if c["name"] == "audit trail")
        assert check["detail"] in " ".join(drilled.stdout.split()), drilled.stdout  # the CLI shows it too
        return drilled.returncode, check

    code, check = audit_check("--public-key", str(pins))
    assert code == 0 and check["passed"], check
    assert f"against the keys pinned in {pins} (sha256 " in str(check["detail"])
    (trusted,) = check["evidence"]["trusted_keys"]  # type: ignore[index]
    assert trusted["pinned"] and trusted["pin_files"][0]["path"] == str(pins) and trusted["findings"] == []

    kid = forge(store, data_dir / "keys" / "kek.key")
    assert sentinel(data_dir, "backup", "run").returncode == 0
    code, check = audit_check()
    assert code == 0 and check["passed"], check  # the blind spot, which the drill names
    assert "stored in the restored store itself (not pinned" in str(check["detail"])
    code, check = audit_check("--public-key", str(pins))
    assert code == 1 and not check["passed"]
    assert f"unpinned_key {kid}" in str(check["detail"]) and "DO NOT verify" in str(check["detail"])
    (trusted,) = check["evidence"]["trusted_keys"]  # type: ignore[index]
    assert [(f["kind"], f["kid"]) for f in trusted["findings"]] == [("unpinned_key", kid)]

    garbage = tmp_path / "garbage.txt"
    garbage.write_bytes(b"\x00\xff not a pin file\n")
    refused = sentinel(data_dir, "drill", "run", "--public-key", str(garbage))
    assert refused.returncode == 2 and "garbage.txt:1 is not a pinned key line" in refused.stderr
    assert "Traceback" not in refused.stderr

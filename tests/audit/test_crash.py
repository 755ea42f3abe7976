"""`kill -9` in the middle of load, in strict mode: after a restart, every request that got a response has
exactly one completed record, every request that reached the upstream has at least a started record,
nothing is duplicated, and the chain verifies."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import orjson
import requests

from sentinel.audit.kek import LocalKeyFile
from sentinel.audit.keyring import KeyRing, WrappedKey
from sentinel.audit.record import decrypt
from tests.conftest import wait_until
from tests.support.frames import SSE_HEADERS, vllm_chat_stream
from tests.support.loop import BackgroundLoop
from tests.support.upstream import Script, ScriptedUpstream, free_port


def start(data_dir: Path, upstream: str, port: int, admin_port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
    env.update(
        {
            "SENTINEL_UPSTREAM_URL": upstream,
            "SENTINEL_PORT": str(port),
            "SENTINEL_ADMIN_PORT": str(admin_port),
            "SENTINEL_DATA_DIR": str(data_dir),
            "SENTINEL_AUDIT_MODE": "strict",
            "SENTINEL_LOG_LEVEL": "warning",
            "SENTINEL_GPU_SOURCES": "[]",
        }
    )
    process = subprocess.Popen([sys.executable, "-m", "sentinel", "serve"], env=env, stderr=subprocess.DEVNULL)

    def up() -> bool:
        try:
            return requests.get(f"http://127.0.0.1:{admin_port}/healthz", timeout=1).ok
        except requests.ConnectionError:
            return False

    wait_until(up, timeout=60, interval=0.1)  # a safety net: starting takes a few seconds
    return process


def test_kill_9_mid_load_loses_nothing(servers: BackgroundLoop, upstream: ScriptedUpstream, tmp_path: Path) -> None:
    upstream.script(
        "/v1/chat/completions",
        Script(headers=SSE_HEADERS, chunks=vllm_chat_stream([], ["a", "b", "c"]), delay=0.005),
    )
    data_dir = tmp_path / "data"
    port, admin_port = free_port(), free_port()
    process = start(data_dir, upstream.url, port, admin_port)
    completed: list[str] = []
    stop = threading.Event()

    def client(worker: int) -> None:
        n = 0
        while not stop.is_set():
            prompt = f"w{worker}-r{n}"
            n += 1
            try:
                response = requests.post(
                    f"http://127.0.0.1:{port}/v1/chat/completions",
                    json={"model": "m", "stream": True, "messages": [{"role": "user", "content": prompt}]},
                    timeout=10,
                )
                if response.status_code == 200 and response.content.endswith(b"data: [DONE]\n\n"):
                    completed.append(prompt)
            except requests.RequestException:
                pass

    workers = [threading.Thread(target=client, args=(w,)) for w in range(6)]
    for worker in workers:
        worker.start()
    wait_until(lambda: len(completed) >= 60, timeout=60)
    process.send_signal(signal.SIGKILL)  # no shutdown, no flush, mid-request for several clients
    process.wait()
    stop.set()
    for worker in workers:
        worker.join()
    reached_upstream = {orjson.loads(seen.body)["messages"][0]["content"] for seen in upstream.seen}

    # Restart on the same data directory, let it ship, stop it cleanly.
    process = start(data_dir, upstream.url, port, admin_port)
    db_path = data_dir / "audit" / "spool.db"

    def shipped() -> bool:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        try:
            return db.execute("SELECT COUNT(*) FROM records WHERE shipped = 0").fetchone()[0] == 0
        finally:
            db.close()

    wait_until(shipped, timeout=60)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0

    store = sqlite3.connect(data_dir / "audit" / "store.db")
    keys = [WrappedKey.from_dict(orjson.loads(b)) for (b,) in store.execute("SELECT body FROM keys")]
    ring = KeyRing(LocalKeyFile.load(data_dir / "keys" / "kek.key"), keys=keys)
    prompts: dict[str, list[str]] = {}
    for kind, body in store.execute("SELECT kind, body FROM records WHERE kind LIKE 'interaction%'"):
        doc: dict[str, Any] = orjson.loads(body)
        prompt = decrypt(ring, doc)["request_messages"][0]["content"]
        prompts.setdefault(prompt, []).append(kind)
    store.close()

    assert len(completed) >= 60
    for prompt in completed:  # the client got the whole answer: the completed record was durable first
        assert prompts[prompt].count("interaction") == 1, (prompt, prompts.get(prompt))
    for prompt in reached_upstream:  # the model saw it: there is at least a record that it started
        assert prompts.get(prompt), prompt
        assert prompts[prompt].count("interaction_started") == 1
        assert prompts[prompt].count("interaction") <= 1

    result = subprocess.run(
        [sys.executable, "-m", "sentinel", "audit", "verify", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr

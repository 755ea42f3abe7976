"""The real `sentinel` processes: `serve` started the way operators start it, and `demo`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import click
import orjson
import requests

from tests.conftest import wait_until
from tests.support.frames import SSE_HEADERS, vllm_chat_stream
from tests.support.loop import BackgroundLoop
from tests.support.upstream import Script, ScriptedUpstream, free_port


def test_serve_process_proxies_records_and_stops_gracefully(
    servers: BackgroundLoop, upstream: ScriptedUpstream, tmp_path: Path
) -> None:
    script = upstream.script(
        "/v1/chat/completions", Script(headers=SSE_HEADERS, chunks=vllm_chat_stream(["r"], ["ok"]))
    )
    port, admin_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
    env.update(
        {
            "SENTINEL_UPSTREAM_URL": upstream.url,
            "SENTINEL_PORT": str(port),
            "SENTINEL_ADMIN_PORT": str(admin_port),
            "SENTINEL_DATA_DIR": str(tmp_path),
            "SENTINEL_SINKS_JSONL_PATH": "interactions.jsonl",
            "SENTINEL_LOG_FORMAT": "json",
        }
    )
    process = subprocess.Popen([sys.executable, "-m", "sentinel", "serve"], env=env, stderr=subprocess.PIPE, text=True)
    try:

        def up() -> bool:
            try:
                return requests.get(f"http://127.0.0.1:{admin_port}/healthz", timeout=30).status_code == 200
            except requests.ConnectionError:
                return False

        wait_until(up, timeout=60, interval=0.1)
        response = requests.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={"model": "m", "messages": [], "stream": True},
            timeout=30,
        )
        assert response.content == script.body
        metrics = requests.get(f"http://127.0.0.1:{admin_port}/metrics", timeout=30).text
        assert "gen_ai_server_request_duration_seconds_count" in metrics
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    lines = [orjson.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert any("shutting down" in line["message"] for line in lines)  # structured JSON logs
    messages = [line["message"] for line in lines]
    assert len(messages) == len(set(messages)), messages  # each line once (two uvicorn servers run)
    assert sum("Sentinel proxying" in m for m in messages) == 1
    record = orjson.loads((tmp_path / "interactions.jsonl").read_bytes().splitlines()[0])
    assert record["outcome"] == "ok" and record["usage"]["output_tokens"] == 34


def test_demo_runs_and_shows_what_was_captured() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
    env["COLUMNS"] = "80"  # a newcomer's terminal
    result = subprocess.run(
        [sys.executable, "-m", "sentinel", "demo"], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "DEMO upstream" in out and "not a real model" in out
    assert "Interactions Sentinel recorded" in out
    assert "/v1/chat/completions" in out and "/api/chat" in out and "/v1/embeddings" in out
    assert '"reasoning_text": "The user wrote' in out
    assert "sentinel_requests_total" in out and "gen_ai_server_time_to_first_token_seconds_count" in out
    assert "decrypted by an auditor" in out and "intact" in out and "dify-end-user-42" in out
    too_wide = [line for line in out.splitlines() if len(line) > 80 or "…" in line]
    assert too_wide == [], too_wide  # nothing wraps, nothing is cut


def test_sentinel_help_lists_every_command_as_the_command_describes_itself() -> None:
    """`sentinel --help` reads each command's help from `COMMANDS` without importing it; it must
    match the command's own help, and every command module must still load."""
    from sentinel.cli import COMMANDS, main

    ctx = click.Context(main)
    for name, (_, help_text) in COMMANDS.items():
        command = main.get_command(ctx, name)
        assert command is not None and command.name == name
        assert " ".join((command.help or "").split("\n\n")[0].split()) == help_text, name

"""The `sentinel backup` and `sentinel drill` commands as operators run them (real processes)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import orjson

from tests.backup.conftest import write_model


def sentinel(data_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
    full.update({"SENTINEL_DATA_DIR": str(data_dir), "COLUMNS": "200", **env})
    return subprocess.run(
        [sys.executable, "-m", "sentinel", *args], capture_output=True, text=True, env=full, timeout=120
    )


def test_operator_workflow(tmp_path: Path) -> None:
    data = tmp_path / "data"
    models = tmp_path / "models"
    write_model(models, {"model.safetensors": 800_000})
    plans = orjson.dumps({"models": {"sources": [{"kind": "path", "path": str(models)}]}}).decode()
    env = {"SENTINEL_BACKUP_PLANS": plans}

    created = sentinel(data, "backup", "init-key")
    assert created.returncode == 0, created.stderr
    key = data / "keys" / "backup.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and "key id" in created.stdout
    again = sentinel(data, "backup", "init-key")
    assert again.returncode == 1 and "never overwritten" in again.stderr

    ran = sentinel(data, "backup", "run", "models", **env)
    assert ran.returncode == 0, ran.stderr
    assert "snapshot" in ran.stdout and "uploaded" in ran.stdout
    listed = sentinel(data, "backup", "list", **env)
    assert listed.returncode == 0 and "models" in listed.stdout and "781.2 KiB" in listed.stdout
    shown = sentinel(data, "backup", "show", "latest", "--files", **env)
    assert shown.returncode == 0 and "model.safetensors" in shown.stdout
    verified = sentinel(data, "backup", "verify", "latest", "--read-data", **env)
    assert verified.returncode == 0 and "authentic" in verified.stdout, verified.stderr
    restored = sentinel(data, "backup", "restore", "latest", "--target", str(tmp_path / "out"), **env)
    assert restored.returncode == 0, restored.stderr
    assert (tmp_path / "out/path/model.safetensors").read_bytes() == (models / "model.safetensors").read_bytes()
    pruned = sentinel(data, "backup", "prune", "--dry-run", **env)
    assert pruned.returncode == 0 and "kept 1 snapshots" in pruned.stdout, pruned.stderr

    drilled = sentinel(data, "drill", "run", "models", **env)
    assert drilled.returncode == 0, drilled.stdout + drilled.stderr
    assert "PASSED" in drilled.stdout and "RTO" in drilled.stdout
    assert list((data / "backup" / "drills").glob("*-models.md"))

    # The wrong key: a clear error naming both key ids, no traceback, no garbage.
    other = tmp_path / "other.key"
    assert sentinel(data, "backup", "init-key", SENTINEL_BACKUP_KEY_FILE=str(other)).returncode == 0
    wrong = sentinel(
        data, "backup", "restore", "latest", "--target", str(tmp_path / "x"), SENTINEL_BACKUP_KEY_FILE=str(other), **env
    )
    assert wrong.returncode == 1 and "wrong backup key" in wrong.stderr and "Traceback" not in wrong.stderr
    assert not (tmp_path / "x").exists()


def test_help_lists_the_commands() -> None:
    full = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
    out = subprocess.run([sys.executable, "-m", "sentinel", "--help"], capture_output=True, text=True, env=full).stdout
    assert "backup" in out and "drill" in out and "scheduler" in out

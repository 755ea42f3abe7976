"""Sources: the KEK and the backup key never enter a backup; key material and SQLite copied correctly."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from sentinel.backup.jobs import run_backup
from sentinel.backup.restore import Restorer
from sentinel.backup.sources import PlanError
from tests.backup.conftest import MakeContext


def test_a_plan_that_would_include_the_kek_is_refused(make_context: MakeContext, data_dir: Path) -> None:
    context = make_context(plans={"everything": {"sources": [{"kind": "path", "path": str(data_dir)}]}})
    with pytest.raises(PlanError, match="key-encryption key"):
        context.sources("everything")
    outcome = run_backup(context, "everything")
    assert outcome.outcome == "failure" and "key-encryption key" in str(outcome.error)
    assert not (data_dir / "backups" / "snapshots").exists()
    assert context.run_log().latest("backup")["everything"].outcome == "failure"


def test_excluding_the_key_files_makes_the_plan_acceptable(make_context: MakeContext, data_dir: Path) -> None:
    (data_dir / "notes.txt").write_text("hello")
    context = make_context(
        plans={
            "data": {
                "sources": [
                    {"kind": "path", "path": str(data_dir), "exclude": ["keys/kek.key", "keys/backup.key", "backups"]}
                ]
            }
        }
    )
    outcome = run_backup(context, "data")
    assert outcome.outcome == "success", outcome.error
    assert outcome.snapshot is not None
    paths = {f.path for f in outcome.snapshot.files}
    assert "notes.txt" in paths and "keys/audit-data-keys.json" in paths
    assert "keys/kek.key" not in paths and "keys/backup.key" not in paths


def test_a_symlinked_or_hard_linked_kek_is_caught_while_walking(
    make_context: MakeContext, data_dir: Path, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    os.link(data_dir / "keys" / "kek.key", models / "innocent.bin")  # same inode, other name
    context = make_context(plans={"m": {"sources": [{"kind": "path", "path": str(models)}]}})
    outcome = run_backup(context, "m")
    assert outcome.outcome == "failure" and "key-encryption key" in str(outcome.error)
    (models / "innocent.bin").unlink()
    (tmp_path / "linked").symlink_to(data_dir / "keys")  # a root that is a symlink to the keys dir
    context = make_context(plans={"m": {"sources": [{"kind": "path", "path": str(tmp_path / "linked")}]}})
    assert run_backup(context, "m").outcome == "failure"


def test_key_source_backs_up_key_material_and_config_but_not_kek_or_backup_key(
    make_context: MakeContext, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "sentinel.yaml"
    config.write_text("log_level: info\n")
    monkeypatch.setenv("SENTINEL_CONFIG", str(config))
    monkeypatch.setenv("SENTINEL_KEY_FILE", str(data_dir / "keys" / "kek.key"))
    context = make_context(plans={"k": {"sources": [{"kind": "keys"}]}})
    outcome = run_backup(context, "k")
    assert outcome.outcome == "success", outcome.error
    assert outcome.snapshot is not None
    files = {f.path for f in outcome.snapshot.files if f.type == "file"}
    assert files == {"keys/audit-data-keys.json", "config/sentinel.yaml"}
    repo = context.repository("k")
    Restorer(repo).restore(outcome.snapshot, tmp_path / "r")
    assert (tmp_path / "r/keys/keys/audit-data-keys.json").read_text() == '{"k1": "wrapped"}\n'


def test_kek_location_follows_sentinel_key_file(
    make_context: MakeContext, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "secrets" / "master.kek"
    elsewhere.parent.mkdir()
    elsewhere.write_text("kek")
    (data_dir / "keys" / "kek.key").unlink()
    monkeypatch.setenv("SENTINEL_KEY_FILE", str(elsewhere))
    context = make_context(plans={"s": {"sources": [{"kind": "path", "path": str(tmp_path / "secrets")}]}})
    with pytest.raises(PlanError, match="master.kek"):
        context.sources("s")


def test_sqlite_online_copy_is_consistent_while_a_writer_runs(
    make_context: MakeContext, data_dir: Path, tmp_path: Path
) -> None:
    db = data_dir / "audit" / "store.db"
    db.parent.mkdir()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE records (seq INTEGER PRIMARY KEY, ts REAL, body BLOB)")
        conn.executemany(
            "INSERT INTO records VALUES (?, ?, ?)", [(i, 1_700_000_000 + i, b"x" * 500) for i in range(2000)]
        )
        conn.commit()
    stop = threading.Event()

    def writer() -> None:
        with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
            seq = 2000
            while not stop.is_set():
                # Two rows per transaction: a consistent copy always has an even count.
                conn.executemany(
                    "INSERT INTO records VALUES (?, ?, ?)", [(seq, time.time(), b"y"), (seq + 1, time.time(), b"y")]
                )
                conn.commit()
                seq += 2

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        context = make_context(
            plans={
                "audit": {
                    "sources": [{"kind": "sqlite", "name": "audit", "newest_record_sql": "SELECT max(ts) FROM records"}]
                }
            }
        )
        outcome = run_backup(context, "audit")
    finally:
        stop.set()
        thread.join()
    assert outcome.outcome == "success", outcome.error
    assert outcome.snapshot is not None
    meta = outcome.snapshot.sources[0].meta
    assert meta["newest_record"] >= 1_700_001_999
    Restorer(context.repository("audit")).restore(outcome.snapshot, tmp_path / "r")
    restored = tmp_path / "r" / "audit" / "store.db"
    assert not (tmp_path / "r" / "audit" / "store.db-wal").exists()
    with contextlib.closing(sqlite3.connect(restored)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        count = conn.execute("SELECT count(*) FROM records").fetchone()[0]
        assert count >= 2000 and count % 2 == 0


def test_missing_sources_fail_unless_missing_ok(make_context: MakeContext, tmp_path: Path) -> None:
    context = make_context(plans={"p": {"sources": [{"kind": "path", "path": str(tmp_path / "nope")}]}})
    outcome = run_backup(context, "p")
    assert outcome.outcome == "failure" and "does not exist" in str(outcome.error)
    # The default plan: the audit store may not exist yet on a fresh install.
    default = make_context()
    outcome = run_backup(default, "default")
    assert outcome.outcome == "success", outcome.error
    assert outcome.snapshot is not None and outcome.snapshot.source("audit").meta == {"missing": True}  # type: ignore[union-attr]

"""PostgreSQL sources against a real server: pg_dump streamed in, restored to a file and into psql."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sentinel.backup.jobs import run_backup
from sentinel.backup.restore import Restorer
from sentinel.backup.sources.postgres import DUMP_FOOTER
from tests.backup.conftest import MakeContext
from tests.backup.test_failures import run_cli
from tests.support.postgres import PASSWORD, Postgres, running_postgres


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    with running_postgres() as server:
        server.psql("postgres", "CREATE DATABASE dify")
        server.psql(
            "dify",
            "CREATE TABLE apps (id serial PRIMARY KEY, name text NOT NULL, config jsonb);"
            "INSERT INTO apps (name, config) SELECT 'app-' || g, jsonb_build_object('n', g) "
            "FROM generate_series(1, 50000) g;",
        )
        yield server


def plan(postgres: Postgres, password_file: Path) -> dict[str, object]:
    source = {"kind": "postgres", "name": "dify", "dsn": postgres.dsn("dify"), "password_file": str(password_file)}
    return {"dify": {"sources": [source]}}


def test_pg_dump_is_streamed_in_and_restores_to_a_file_and_into_psql(
    make_context: MakeContext, postgres: Postgres, tmp_path: Path
) -> None:
    password_file = tmp_path / "pgpass"
    password_file.write_text(PASSWORD)
    small = {"chunk_min_size": 16 * 1024, "chunk_avg_size": 64 * 1024, "chunk_max_size": 256 * 1024}
    context = make_context(plans=plan(postgres, password_file), **small)
    outcome = run_backup(context, "dify")
    assert outcome.outcome == "success", outcome.error
    assert outcome.snapshot is not None
    dump = next(f for f in outcome.snapshot.files if f.path == "dump.sql")
    assert dump.size > 100_000

    repo = context.repository("dify")
    Restorer(repo).restore(outcome.snapshot, tmp_path / "r")
    text = (tmp_path / "r" / "dify" / "dump.sql").read_bytes()
    assert b"CREATE TABLE public.apps" in text and DUMP_FOOTER in text and PASSWORD.encode() not in text

    postgres.psql("postgres", "CREATE DATABASE restored")
    env_password = {"PGPASSWORD": PASSWORD}
    os.environ.update(env_password)
    try:
        result = run_cli(context, "backup", "restore", "latest", "--psql", postgres.dsn("restored"))
    finally:
        os.environ.pop("PGPASSWORD")
    assert result.returncode == 0, result.stderr
    query = "SELECT count(*), sum((config->>'n')::int) FROM apps"
    assert postgres.psql("restored", query) == postgres.psql("dify", query) == "50000|1250025000"

    # Unchanged database: the second dump deduplicates to (almost) nothing.
    again = run_backup(context, "dify")
    assert again.stats is not None and again.stats.uploaded_bytes < dump.size // 4


def test_pg_dump_failure_is_a_clean_failure_without_the_password(
    make_context: MakeContext, postgres: Postgres, tmp_path: Path
) -> None:
    password_file = tmp_path / "pgpass"
    password_file.write_text("not-the-password")
    context = make_context(plans=plan(postgres, password_file))
    outcome = run_backup(context, "dify")
    assert outcome.outcome == "failure"
    assert "pg_dump failed" in str(outcome.error) and "password authentication failed" in str(outcome.error)
    assert "not-the-password" not in str(outcome.error)
    assert context.repository("dify").snapshots() == []


def test_a_password_in_the_dsn_is_refused(make_context: MakeContext, postgres: Postgres) -> None:
    from sentinel.config import ConfigError

    with pytest.raises(ConfigError, match="not in the dsn"):
        make_context(plans={"p": {"sources": [{"kind": "postgres", "dsn": "postgresql://u:secret@h/db"}]}})

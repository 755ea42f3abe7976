"""A SQLite database (the embedded audit store) copied online with SQLite's backup API.

The backup API copies a transactionally consistent image while writers carry on (in WAL mode
they are not even blocked), so the snapshot never catches a half-written transaction, unlike a
plain file copy of `store.db` next to its `-wal` file.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from sentinel.backup.sources import Source, SourceError, SourceItem


def newest_record_time(db: Path, sql: str) -> float | None:
    """Run the configured query on a copy; it returns epoch seconds or an ISO 8601 time (or NULL)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        row = conn.execute(sql).fetchone()
    return parse_time(row[0] if row else None)


def parse_time(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, int | float):
        # Milliseconds or nanoseconds since the epoch are common in stores; normalise to seconds.
        number = float(value)
        while number > 1e11:
            number /= 1000.0
        return number
    text = str(value).strip()
    try:
        return parse_time(float(text))
    except ValueError:
        pass
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class SqliteSource(Source):
    kind = "sqlite"

    def __init__(self, name: str, path: Path, newest_record_sql: str | None, *, missing_ok: bool) -> None:
        super().__init__(name)
        self.path, self.newest_record_sql, self.missing_ok = path, newest_record_sql, missing_ok

    def items(self, scratch: Path) -> Iterator[SourceItem]:
        if not self.path.is_file():
            if self.missing_ok:
                self.meta["missing"] = True
                return
            raise SourceError(f"source {self.name!r}: no SQLite database at {self.path}")
        copy = scratch / self.path.name
        try:
            # Not mode=ro: reading a WAL database may need to create its -shm file.
            with (
                contextlib.closing(sqlite3.connect(self.path, timeout=30)) as src,
                contextlib.closing(sqlite3.connect(copy)) as dst,
            ):
                src.backup(dst, pages=4096)
            with contextlib.closing(sqlite3.connect(copy)) as check:
                check.execute("PRAGMA journal_mode=DELETE")  # a self-contained file, no -wal beside it
        except sqlite3.Error as exc:
            raise SourceError(f"source {self.name!r}: cannot copy {self.path}: {exc}") from exc
        self.meta["database"] = self.path.name
        if self.newest_record_sql:
            try:
                self.meta["newest_record"] = newest_record_time(copy, self.newest_record_sql)
            except (sqlite3.Error, ValueError) as exc:
                raise SourceError(f"source {self.name!r}: newest_record_sql failed: {exc}") from exc
        self.meta["newest_record_sql"] = self.newest_record_sql
        info = copy.stat()
        yield SourceItem(
            self.path.name,
            "file",
            mode=0o600,
            mtime_ns=info.st_mtime_ns,
            size=info.st_size,
            opener=lambda: open(copy, "rb", buffering=0),  # noqa: SIM115 (the caller closes it)
        )

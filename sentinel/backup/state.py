"""Outcomes of backup and drill runs, kept in a small SQLite file in the data directory; the newest
snapshot index entry seen per repository (so a repository whose index was cut back is noticed here);
and per plan what the last look at its repository found missing, damaged or acknowledged lost.

Runs happen in their own processes (`sentinel backup run`, `sentinel drill run`, started by the
scheduler); they append a row here, and `/metrics` reads the latest rows at scrape time. WAL mode
lets a scrape read while a run writes.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,            -- backup | drill | prune
    plan TEXT NOT NULL,
    started REAL NOT NULL,
    finished REAL NOT NULL,
    outcome TEXT NOT NULL,         -- success | failure
    size INTEGER,                  -- backup: snapshot bytes
    uploaded INTEGER,              -- backup: sealed bytes uploaded
    snapshot TEXT,
    error TEXT,
    rto REAL,                      -- drill
    rpo REAL,                      -- drill
    passed INTEGER,                -- drill: 1 when every check passed and RTO/RPO met their targets
    report TEXT                    -- drill: path of the report
);
CREATE INDEX IF NOT EXISTS runs_kind_plan ON runs (kind, plan, finished);
CREATE TABLE IF NOT EXISTS index_seen (
    repository TEXT PRIMARY KEY,   -- repository id
    sequence INTEGER NOT NULL      -- the highest signed snapshot index entry this host wrote or read
);
CREATE TABLE IF NOT EXISTS health (
    plan TEXT PRIMARY KEY,
    checked REAL NOT NULL,         -- when a backup, prune, verify, list, restore or drill last looked
    missing INTEGER NOT NULL,      -- snapshots the signed index names that are gone
    damaged INTEGER NOT NULL,      -- snapshots whose manifest does not authenticate
    cut_back INTEGER NOT NULL,     -- 1: the index is older than an entry this host saw
    lost INTEGER NOT NULL          -- missing or damaged snapshots acknowledged as lost
);
"""


@dataclass
class RunRecord:
    kind: str
    plan: str
    started: float
    finished: float
    outcome: str
    size: int | None = None
    uploaded: int | None = None
    snapshot: str | None = None
    error: str | None = None
    rto: float | None = None
    rpo: float | None = None
    passed: bool | None = None
    report: str | None = None

    @property
    def duration(self) -> float:
        return self.finished - self.started


@dataclass
class PlanHealth:
    """What the last look at a plan's repository found (see `Catalog`); `checked` is set when recorded."""

    plan: str
    missing: int = 0
    damaged: int = 0
    cut_back: bool = False
    lost: int = 0
    checked: float = 0.0


_COLUMNS = "kind, plan, started, finished, outcome, size, uploaded, snapshot, error, rto, rpo, passed, report"


class RunLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.contextmanager
    def _connect(self, *, write: bool) -> Iterator[sqlite3.Connection]:
        if write:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30)
        else:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5)
        try:
            if write:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.executescript(_SCHEMA)
            yield conn
            conn.commit()
        finally:
            conn.close()

    def record(self, run: RunRecord) -> None:
        with self._connect(write=True) as conn:
            conn.execute(
                f"INSERT INTO runs ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run.kind,
                    run.plan,
                    run.started,
                    run.finished,
                    run.outcome,
                    run.size,
                    run.uploaded,
                    run.snapshot,
                    run.error,
                    run.rto,
                    run.rpo,
                    None if run.passed is None else int(run.passed),
                    run.report,
                ),
            )

    def _rows(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        if not self.path.exists():
            return []
        with self._connect(write=False) as conn:
            try:
                return list(conn.execute(sql, args))
            except sqlite3.OperationalError:  # no table yet
                return []

    @staticmethod
    def _record(row: tuple[object, ...]) -> RunRecord:
        values = list(row)
        values[11] = None if values[11] is None else bool(values[11])
        return RunRecord(*values)  # type: ignore[arg-type]

    def latest(self, kind: str, *, outcome: str | None = None) -> dict[str, RunRecord]:
        """The most recent run of `kind` per plan (only `outcome` ones if given)."""
        where = "kind = ?" + (" AND outcome = ?" if outcome else "")
        args: tuple[object, ...] = (kind, outcome) if outcome else (kind,)
        rows = self._rows(
            f"SELECT {_COLUMNS} FROM runs WHERE id IN (SELECT max(id) FROM runs WHERE {where} GROUP BY plan)", args
        )
        return {str(row[1]): self._record(row) for row in rows}

    def counts(self, kind: str) -> dict[tuple[str, str], int]:
        rows = self._rows("SELECT plan, outcome, count(*) FROM runs WHERE kind = ? GROUP BY plan, outcome", (kind,))
        return {(str(plan), str(outcome)): int(str(count)) for plan, outcome, count in rows}

    def history(self, kind: str | None = None, limit: int = 50) -> list[RunRecord]:
        where, args = ("WHERE kind = ?", (kind,)) if kind else ("", ())
        rows = self._rows(f"SELECT {_COLUMNS} FROM runs {where} ORDER BY id DESC LIMIT ?", (*args, limit))
        return [self._record(row) for row in rows]

    def index_seen(self, repository: str) -> int:
        """The highest snapshot index sequence this host wrote or read for `repository`; -1 if none."""
        rows = self._rows("SELECT sequence FROM index_seen WHERE repository = ?", (repository,))
        return int(str(rows[0][0])) if rows else -1

    def saw_index(self, repository: str, sequence: int) -> None:
        with self._connect(write=True) as conn:
            conn.execute(
                "INSERT INTO index_seen (repository, sequence) VALUES (?, ?) "
                "ON CONFLICT (repository) DO UPDATE SET sequence = max(sequence, excluded.sequence)",
                (repository, sequence),
            )

    def saw_health(self, health: Sequence[PlanHealth], *, now: float | None = None) -> None:
        """Replace each plan's health with what a look at its repository just found."""
        if not health:
            return
        checked = time.time() if now is None else now
        with self._connect(write=True) as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO health (plan, checked, missing, damaged, cut_back, lost) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(h.plan, checked, h.missing, h.damaged, int(h.cut_back), h.lost) for h in health],
            )

    def health(self) -> dict[str, PlanHealth]:
        rows = self._rows("SELECT plan, missing, damaged, cut_back, lost, checked FROM health")
        return {
            str(plan): PlanHealth(str(plan), int(str(m)), int(str(d)), bool(c), int(str(lo)), float(str(t)))
            for plan, m, d, c, lo, t in rows
        }

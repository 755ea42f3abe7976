"""`Spool`: the durable local queue every audit record enters first (SQLite, WAL, group commit).

A record is durable once its batch's transaction has committed (`synchronous=FULL` fsyncs the
WAL on each commit). The shipper later copies records to the store and marks them shipped;
shipped records older than the retention are pruned, except the newest, which carries the chain
head across restarts. A record the store refused as a fork (it holds another record under the same
id) is marked forked instead: never retried, never pruned, listed by `forks()` until an operator
resolves it. All database work runs on the spool's own single thread, serialised, so the event
loop never waits on disk; callers get awaitables.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import orjson

from sentinel.audit.chain import ChainHead
from sentinel.audit.keyring import WrappedKey
from sentinel.audit.record import stored_hashes

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    doc_id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    recorded_at REAL NOT NULL,
    body BLOB NOT NULL,
    shipped INTEGER NOT NULL DEFAULT 0  -- 0 waiting, 1 in the store, 2 forked (the store holds another: `forks`)
);
CREATE INDEX IF NOT EXISTS records_unshipped ON records(shipped, seq);
CREATE TABLE IF NOT EXISTS keys (
    kid TEXT NOT NULL,
    kek_id TEXT NOT NULL,
    body BLOB NOT NULL,
    shipped INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (kid, kek_id)
);
CREATE TABLE IF NOT EXISTS checkpoints (
    seq INTEGER PRIMARY KEY,
    body BLOB NOT NULL,
    shipped INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS anchors (
    seq INTEGER PRIMARY KEY,
    token BLOB,
    anchored_at REAL
);
CREATE TABLE IF NOT EXISTS tiles (
    level INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    hashes BLOB NOT NULL,
    PRIMARY KEY (level, idx)
);
CREATE TABLE IF NOT EXISTS forks (
    seq INTEGER PRIMARY KEY,
    ours TEXT NOT NULL,
    theirs TEXT NOT NULL,
    detected_at REAL NOT NULL
);
"""


_UNANCHORED = (
    "json_extract(c.body, '$.note') IS NOT NULL AND "
    "NOT EXISTS (SELECT 1 FROM anchors x WHERE x.seq = c.seq AND x.anchored_at IS NOT NULL)"
)


class SpoolUnavailable(Exception):
    """The spool cannot be opened or written (read-only directory, disk full, corrupt file)."""


@dataclass(slots=True)
class Row:
    seq: int
    doc_id: str
    kind: str
    recorded_at: float
    body: bytes


class ForkedRecord(NamedTuple):
    """A record of ours the store refused because it holds another one under the same doc id."""

    doc_id: str
    seq: int
    recorded_at: float
    ours: str
    """Our record's hash."""
    theirs: str
    """The hash of the record the store holds under that id."""
    detected_at: float


_FORKS = (
    "SELECT r.doc_id, r.seq, r.recorded_at, f.ours, f.theirs, f.detected_at "
    "FROM forks f JOIN records r ON r.seq = f.seq WHERE r.shipped = 2 ORDER BY r.seq"
)


def read_forks(path: Path) -> list[ForkedRecord]:
    """The forked records of a spool file, read-only, beside a running server (none if no spool)."""
    if not path.exists():
        return []
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise SpoolUnavailable(f"cannot read audit spool {path}: {exc}") from exc
    try:
        if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'forks'").fetchone() is None:
            return []  # written by a version before forks were kept apart
        return [ForkedRecord(*row) for row in db.execute(_FORKS)]
    except sqlite3.Error as exc:
        raise SpoolUnavailable(f"cannot read audit spool {path}: {exc}") from exc
    finally:
        db.close()


class Spool:
    def __init__(self, path: Path, *, synchronous: str = "FULL", max_bytes: int | None = None) -> None:
        self.path = path
        self._synchronous = synchronous
        self.max_bytes = max_bytes
        """The bound on the spool's size: SQLite refuses writes past it as if the disk were full."""
        self.used_bytes = 0
        """Bytes the spool's pages hold (free pages, reused before the file grows, not counted)."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-spool")
        self._db: sqlite3.Connection | None = None

    # -- running work on the spool thread -----------------------------------------------------
    def run_sync(self, fn: Callable[[], T]) -> T:
        """Run on the spool thread and wait (for start-up and rare key writes)."""
        return self._executor.submit(fn).result()

    async def run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def close(self) -> None:
        def _close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        self._executor.submit(_close).result()
        self._executor.shutdown(wait=True)

    # -- everything below runs on the spool thread --------------------------------------------
    def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self._synchronous}")
            db.executescript(_SCHEMA)
            if self.max_bytes is not None:
                page_size = db.execute("PRAGMA page_size").fetchone()[0]
                db.execute(f"PRAGMA max_page_count={max(1, self.max_bytes // page_size)}")
            # Prove the database is writable now rather than on the first request.
            db.execute("BEGIN IMMEDIATE")
            db.execute("ROLLBACK")
        except (sqlite3.Error, OSError) as exc:
            raise SpoolUnavailable(f"cannot open audit spool {self.path}: {exc}") from exc
        self._db = db
        self.measure()

    def measure(self) -> int:
        """Refresh `used_bytes` (two page counts read from the header: cheap)."""
        db = self.db
        pages = db.execute("PRAGMA page_count").fetchone()[0] - db.execute("PRAGMA freelist_count").fetchone()[0]
        self.used_bytes = int(pages) * int(db.execute("PRAGMA page_size").fetchone()[0])
        return self.used_bytes

    def free_bytes(self) -> int:
        """Free space on the spool's filesystem, for an unprivileged writer (any thread)."""
        stat = os.statvfs(self.path.parent)
        return stat.f_bavail * stat.f_frsize

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise SpoolUnavailable(f"audit spool {self.path} is not open")
        return self._db

    def head(self) -> ChainHead:
        row = self.db.execute("SELECT body FROM records ORDER BY seq DESC LIMIT 1").fetchone()
        if row is None:
            return ChainHead()
        doc = orjson.loads(row[0])
        return ChainHead(doc["seq"], doc["hash"], doc["recorded_at"])

    def last_checkpoint(self) -> dict[str, Any] | None:
        row = self.db.execute("SELECT body FROM checkpoints ORDER BY seq DESC LIMIT 1").fetchone()
        return orjson.loads(row[0]) if row else None

    def write(
        self,
        rows: list[Row],
        checkpoint: dict[str, Any] | None = None,
        tiles: Sequence[tuple[int, int, bytes]] = (),
    ) -> None:
        """One transaction: the batch (its records, the Merkle tree's tiles they changed, a checkpoint)
        is durable when this returns."""
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "INSERT INTO records (seq, doc_id, kind, recorded_at, body) VALUES (?, ?, ?, ?, ?)",
                [(r.seq, r.doc_id, r.kind, r.recorded_at, r.body) for r in rows],
            )
            if tiles:
                db.executemany("INSERT OR REPLACE INTO tiles (level, idx, hashes) VALUES (?, ?, ?)", tiles)
            if checkpoint is not None:
                db.execute(
                    "INSERT INTO checkpoints (seq, body) VALUES (?, ?)", (checkpoint["seq"], orjson.dumps(checkpoint))
                )
            db.execute("COMMIT")
        except (sqlite3.Error, OSError) as exc:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            bound = ""
            if self.max_bytes is not None and isinstance(exc, sqlite3.Error) and "full" in str(exc):
                bound = f" (audit.spool_max_bytes is {self.max_bytes})"
            raise SpoolUnavailable(f"cannot write to audit spool {self.path}: {exc}{bound}") from exc
        finally:
            with contextlib.suppress(sqlite3.Error):
                self.measure()

    def tile(self, level: int, index: int) -> bytes | None:
        """A tile of this chain's Merkle tree (sentinel/audit/tiles.py)."""
        row = self.db.execute("SELECT hashes FROM tiles WHERE level = ? AND idx = ?", (level, index)).fetchone()
        return bytes(row[0]) if row else None

    def has_tiles(self) -> bool:
        return self.db.execute("SELECT 1 FROM tiles LIMIT 1").fetchone() is not None

    def stored_keys(self) -> list[WrappedKey]:
        return [WrappedKey.from_dict(orjson.loads(b)) for (b,) in self.db.execute("SELECT body FROM keys")]

    # KeyTable (used by KeyRing, from any thread but the spool's own)
    def load_keys(self) -> list[WrappedKey]:
        return self.run_sync(self.stored_keys)

    def save_keys(self, keys: Iterable[WrappedKey]) -> None:
        items = list(keys)

        def _save() -> None:
            db = self.db
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "INSERT OR REPLACE INTO keys (kid, kek_id, body, shipped) VALUES (?, ?, ?, 0)",
                [(k.kid, k.kek_id, orjson.dumps(k.to_dict())) for k in items],
            )
            db.execute("COMMIT")

        self.run_sync(_save)

    # shipping
    def unshipped(self, limit: int) -> tuple[list[bytes], list[Row], list[bytes]]:
        """Keys, records and checkpoints not yet in the store, oldest first."""
        db = self.db
        keys = [b for (b,) in db.execute("SELECT body FROM keys WHERE shipped = 0")]
        records = [
            Row(*r)
            for r in db.execute(
                "SELECT seq, doc_id, kind, recorded_at, body FROM records WHERE shipped = 0 ORDER BY seq LIMIT ?",
                (limit,),
            )
        ]
        last_seq = records[-1].seq if records else None
        if last_seq is None:
            checkpoints = [b for (b,) in db.execute("SELECT body FROM checkpoints WHERE shipped = 0 ORDER BY seq")]
        else:
            # A checkpoint ships only after the records it covers.
            checkpoints = [
                b
                for (b,) in db.execute(
                    "SELECT body FROM checkpoints WHERE shipped = 0 AND seq <= ? ORDER BY seq", (last_seq,)
                )
            ]
        return keys, records, checkpoints

    def mark_shipped(
        self,
        key_ids: list[tuple[str, str]],
        last_seq: int | None,
        checkpoint_seqs: list[int],
        forked: Sequence[tuple[int, str, str]] = (),
    ) -> None:
        """Records up to `last_seq` are in the store, but those `forked` (`(seq, ours, theirs)`): the
        store holds another record under their ids, so they stay here, apart, for an operator."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        db.executemany("UPDATE keys SET shipped = 1 WHERE kid = ? AND kek_id = ?", key_ids)
        if forked:
            detected = time.time()
            db.executemany("UPDATE records SET shipped = 2 WHERE seq = ?", [(seq,) for seq, _, _ in forked])
            db.executemany(
                "INSERT OR REPLACE INTO forks (seq, ours, theirs, detected_at) VALUES (?, ?, ?, ?)",
                [(seq, ours, theirs, detected) for seq, ours, theirs in forked],
            )
        if last_seq is not None:
            db.execute("UPDATE records SET shipped = 1 WHERE shipped = 0 AND seq <= ?", (last_seq,))
        db.executemany("UPDATE checkpoints SET shipped = 1 WHERE seq = ?", [(s,) for s in checkpoint_seqs])
        db.execute("COMMIT")

    def forks(self) -> list[ForkedRecord]:
        """Records the store refused as forks, oldest first."""
        return [ForkedRecord(*row) for row in self.db.execute(_FORKS)]

    def backlog(self) -> tuple[int, float | None]:
        """(records not yet shipped, recorded_at of the oldest of them)."""
        count, oldest = self.db.execute("SELECT COUNT(*), MIN(recorded_at) FROM records WHERE shipped = 0").fetchone()
        return int(count), oldest

    def prune(self, older_than: float, *, anchoring: bool = True) -> int:
        """Delete shipped records recorded before `older_than`, never the newest record, and shipped
        checkpoints but the newest; with `anchoring`, not those still waiting to be anchored."""
        db = self.db
        cursor = db.execute(
            "DELETE FROM records WHERE shipped = 1 AND recorded_at < ? AND seq < (SELECT MAX(seq) FROM records)",
            (older_than,),
        )
        waiting = f"AND NOT ({_UNANCHORED})" if anchoring else ""  # the anchors table keeps the tokens
        db.execute(
            f"DELETE FROM checkpoints AS c WHERE shipped = 1 AND seq < (SELECT MAX(seq) FROM checkpoints) {waiting}"
        )
        self.measure()
        return cursor.rowcount

    # anchoring (sentinel/audit/anchor/publish.py)
    def unanchored(self, limit: int) -> list[tuple[int, dict[str, Any], bytes | None]]:
        """Checkpoints with a Merkle note not yet anchored, oldest first: (seq, checkpoint, token so far)."""
        rows = self.db.execute(
            "SELECT c.seq, c.body, a.token FROM checkpoints c LEFT JOIN anchors a ON a.seq = c.seq "
            f"WHERE {_UNANCHORED} ORDER BY c.seq LIMIT ?",
            (limit,),
        ).fetchall()
        return [
            (int(seq), orjson.loads(body), bytes(token) if token is not None else None) for seq, body, token in rows
        ]

    def save_token(self, seq: int, token: bytes) -> None:
        self.db.execute("INSERT OR REPLACE INTO anchors (seq, token, anchored_at) VALUES (?, ?, NULL)", (seq, token))

    def mark_anchored(self, seq: int, at: float) -> None:
        self.db.execute(
            "INSERT INTO anchors (seq, anchored_at) VALUES (?, ?) ON CONFLICT(seq) DO UPDATE SET anchored_at = ?",
            (seq, at, at),
        )

    def anchor_backlog(self) -> tuple[int, float | None]:
        """(checkpoints waiting to be anchored, the signing time of the oldest of them)."""
        count, oldest = self.db.execute(
            "SELECT COUNT(*), MIN(json_extract(c.body, '$.time')) FROM checkpoints c "
            f"LEFT JOIN anchors a ON a.seq = c.seq WHERE {_UNANCHORED}"
        ).fetchone()
        return int(count), oldest

    def incomplete_since(self, since: float) -> list[dict[str, Any]]:
        """Strict-mode `interaction_started` records with no completed record after them (crash evidence)."""
        started = {}
        for (body,) in self.db.execute(
            "SELECT body FROM records WHERE kind IN ('interaction_started', 'interaction') AND recorded_at >= ? "
            "ORDER BY seq",
            (since,),
        ):
            doc = orjson.loads(body)
            interaction_id = doc["interaction"]["id"]
            if doc["kind"] == "interaction_started":
                started[interaction_id] = doc
            else:
                started.pop(interaction_id, None)
        return list(started.values())


@dataclass(frozen=True, slots=True)
class WriterCopy:
    """The writer's own copy of its chain's recent records, read from its spool (read-only): what
    vouches for the records a store holds after the last signed checkpoint. Every record reaches the
    store through the spool, so a record in the store beyond the spool's newest, or differing from
    the spool's record at its sequence number, was not written by this instance's writer."""

    instance: str
    path: Path

    def shipped(self) -> int:
        """The newest sequence number the writer has shipped to the store (0 if none it still holds)."""
        return int(
            self._read(lambda db: db.execute("SELECT MAX(seq) FROM records WHERE shipped = 1").fetchone()[0]) or 0
        )

    def bodies(self, after: int, through: int) -> list[tuple[int, bytes]]:
        """The stored records with sequence numbers in (after, through], in order: what the verifier
        hashes into the tree to see whether anchored roots cover records not yet shipped."""
        return self._read(
            lambda db: [
                (int(seq), bytes(body))
                for seq, body in db.execute(
                    "SELECT seq, body FROM records WHERE seq > ? AND seq <= ? ORDER BY seq", (after, through)
                )
            ]
        )

    def unshipped(self, kind: str) -> list[bytes]:
        """The stored bodies of the `kind` records the writer holds and has not shipped yet, oldest first."""
        return self._read(
            lambda db: [
                bytes(body)
                for (body,) in db.execute(
                    "SELECT body FROM records WHERE shipped = 0 AND kind = ? ORDER BY seq", (kind,)
                )
            ]
        )

    def at(self, seq: int) -> tuple[int, str | None]:
        """(the spool's newest sequence number, the hash of its record at `seq`, None if not held)."""

        def read(db: sqlite3.Connection) -> tuple[int, str | None]:
            (newest,) = db.execute("SELECT COALESCE(MAX(seq), 0) FROM records").fetchone()
            row = db.execute("SELECT body FROM records WHERE seq = ?", (seq,)).fetchone()
            return int(newest), (stored_hashes(bytes(row[0]))[0] if row is not None else None)

        return self._read(read)

    def _read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        if not self.path.exists():
            raise SpoolUnavailable(f"audit spool {self.path} does not exist")
        try:
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            try:
                return query(db)
            finally:
                db.close()
        except sqlite3.Error as exc:
            raise SpoolUnavailable(f"cannot read audit spool {self.path}: {exc}") from exc

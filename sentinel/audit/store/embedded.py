"""`EmbeddedStore`: the audit store when no Elasticsearch is configured — one SQLite file (WAL).

Besides each full document it keeps the metadata reports filter and aggregate on in columns
(time, model, operation, outcome, status, caller, tokens, latencies) so statistics are SQL, not
Python loops. Writes are `INSERT OR IGNORE` on the deterministic doc id: idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import orjson

from sentinel.audit.keyring import WrappedKey
from sentinel.audit.record import stored_hashes
from sentinel.audit.store import ChainLink, SearchQuery, StoredRecord, StoreUnavailable

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    doc_id TEXT PRIMARY KEY,
    instance TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    recorded_at REAL NOT NULL,
    started_at REAL,
    interaction_id TEXT,
    model TEXT,
    operation TEXT,
    outcome TEXT,
    status INTEGER,
    error_type TEXT,
    api_key_id TEXT,
    user_index TEXT,
    stream INTEGER,
    duration_s REAL,
    ttft_s REAL,
    input_tokens INTEGER,
    output_tokens INTEGER,
    event_type TEXT,
    prev_hash TEXT,
    hash TEXT,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_chain ON records(instance, seq);
CREATE INDEX IF NOT EXISTS records_recorded ON records(instance, recorded_at);
CREATE INDEX IF NOT EXISTS records_started ON records(started_at);
CREATE INDEX IF NOT EXISTS records_interaction ON records(interaction_id);
CREATE INDEX IF NOT EXISTS records_user ON records(user_index);
CREATE TABLE IF NOT EXISTS keys (
    kid TEXT NOT NULL,
    kek_id TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (kid, kek_id)
);
CREATE TABLE IF NOT EXISTS checkpoints (
    doc_id TEXT PRIMARY KEY,
    instance TEXT NOT NULL,
    seq INTEGER NOT NULL,
    body TEXT NOT NULL
);
"""

_COLUMNS = (
    "doc_id, instance, seq, kind, recorded_at, started_at, interaction_id, model, operation, outcome, status, "
    "error_type, api_key_id, user_index, stream, duration_s, ttft_s, input_tokens, output_tokens, event_type, "
    "prev_hash, hash, body"
)


def record_row(doc: dict[str, Any], body: bytes) -> tuple[Any, ...]:
    """The `records` table's row (`_COLUMNS`) for a stored document and its parsed form."""
    i = doc.get("interaction") or {}
    usage = i.get("usage") or {}
    caller = i.get("caller") or {}
    return (
        doc["doc_id"],
        doc["instance"],
        doc["seq"],
        doc["kind"],
        doc["recorded_at"],
        i.get("started_at", (doc.get("event") or {}).get("time")),
        i.get("id"),
        i.get("model_requested"),
        i.get("operation"),
        i.get("outcome"),
        i.get("status_code"),
        i.get("error_type"),
        caller.get("api_key_id"),
        caller.get("user_index"),
        int(bool(i.get("stream"))) if i else None,
        i.get("duration_s"),
        i.get("ttft_s"),
        usage.get("input_tokens"),
        usage.get("output_tokens"),
        (doc.get("event") or {}).get("type"),
        doc.get("prev_hash"),
        doc.get("hash"),
        body.decode(),
    )


_SPAN = 2000


def read_chain_page(db: sqlite3.Connection, instance: str, low: int, high: int) -> list[StoredRecord]:
    """Records of one chain with sequence numbers in [low, high], in `(seq, doc_id)` order.

    By ranges of sequence numbers, not LIMIT: a second record claiming a sequence number lands on the
    same page as the first; `seq` order alone keeps SQLite on the (instance, seq) index without a
    sort (ties are ordered by doc id here)."""
    rows = db.execute(
        "SELECT seq, doc_id, coalesce(prev_hash, ''), recorded_at, kind, event_type, CAST(body AS BLOB) "
        "FROM records WHERE instance = ? AND seq >= ? AND seq <= ? ORDER BY seq",
        (instance, low, high),
    ).fetchall()
    page = list(map(StoredRecord._make, rows))
    if any(page[i].seq == page[i + 1].seq for i in range(len(page) - 1)):
        page.sort(key=lambda record: (record.seq, record.doc_id))
    return page


def open_read_only(path: Path) -> sqlite3.Connection:
    """A plain read-only connection, for a worker process that reads without an event loop."""
    if not path.exists():
        raise StoreUnavailable(f"audit store {path} does not exist")
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def _metadata(body: str) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads(body)
    doc.pop("encrypted", None)
    return doc


class EmbeddedStore:
    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-store")
        self._db: sqlite3.Connection | None = None

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def open(self) -> None:
        def _open() -> None:
            try:
                if self.read_only:
                    if not self.path.exists():
                        raise StoreUnavailable(f"audit store {self.path} does not exist")
                    db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
                else:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                    db.execute("PRAGMA journal_mode=WAL")
                    db.execute("PRAGMA synchronous=NORMAL")
                    db.executescript(_SCHEMA)
            except (sqlite3.Error, OSError) as exc:
                raise StoreUnavailable(f"cannot open audit store {self.path}: {exc}") from exc
            self._db = db

        await self._run(_open)

    async def close(self) -> None:
        def _close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await self._run(_close)
        self._executor.shutdown(wait=True)

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreUnavailable(f"audit store {self.path} is not open")
        return self._db

    def _write(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        try:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany(sql, rows)
            self.db.execute("COMMIT")
        except (sqlite3.Error, OSError) as exc:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
            raise StoreUnavailable(f"cannot write audit store {self.path}: {exc}") from exc

    async def put_keys(self, keys: Sequence[dict[str, Any]]) -> None:
        rows = [(k["kid"], k["kek_id"], orjson.dumps(k).decode()) for k in keys]
        await self._run(lambda: self._write("INSERT OR IGNORE INTO keys (kid, kek_id, body) VALUES (?, ?, ?)", rows))

    async def put_records(self, docs: Sequence[tuple[str, bytes]]) -> None:
        def _put() -> None:
            rows = [record_row(orjson.loads(body), body) for _, body in docs]
            placeholders = ", ".join("?" * 23)
            self._write(f"INSERT OR IGNORE INTO records ({_COLUMNS}) VALUES ({placeholders})", rows)

        await self._run(_put)

    async def put_checkpoints(self, docs: Sequence[dict[str, Any]]) -> None:
        rows = [(d["doc_id"], d["instance"], d["seq"], orjson.dumps(d).decode()) for d in docs]
        await self._run(
            lambda: self._write(
                "INSERT OR IGNORE INTO checkpoints (doc_id, instance, seq, body) VALUES (?, ?, ?, ?)", rows
            )
        )

    async def keys(self) -> list[WrappedKey]:
        return await self._run(
            lambda: [WrappedKey.from_dict(orjson.loads(b)) for (b,) in self.db.execute("SELECT body FROM keys")]
        )

    async def get(self, record_id: str) -> dict[str, Any] | None:
        def _get() -> dict[str, Any] | None:
            row = self.db.execute("SELECT body FROM records WHERE doc_id = ?", (record_id,)).fetchone()
            if row is None:
                row = self.db.execute(
                    "SELECT body FROM records WHERE interaction_id = ? ORDER BY kind = 'interaction' DESC, seq DESC "
                    "LIMIT 1",
                    (record_id,),
                ).fetchone()
            return orjson.loads(row[0]) if row else None

        return await self._run(_get)

    async def search(self, query: SearchQuery) -> list[dict[str, Any]]:
        clauses, params = _where(query)
        sql = f"SELECT body FROM records {clauses} ORDER BY started_at DESC, seq DESC LIMIT ?"
        return await self._run(lambda: [_metadata(b) for (b,) in self.db.execute(sql, (*params, query.limit))])

    async def instances(self) -> list[str]:
        return await self._run(lambda: [i for (i,) in self.db.execute("SELECT DISTINCT instance FROM records")])

    async def chain(self, instance: str, from_seq: int = 1, to_seq: int | None = None) -> AsyncIterator[dict[str, Any]]:
        async for _seq, _doc_id, body in self._chain_rows(instance, from_seq, to_seq, "body"):
            yield orjson.loads(body)

    async def chain_links(
        self, instance: str, from_seq: int = 1, to_seq: int | None = None
    ) -> AsyncIterator[ChainLink]:
        async for seq, doc_id, prev_hash, recorded_at, body in self._chain_rows(
            instance, from_seq, to_seq, "prev_hash, recorded_at, body"
        ):
            claimed, content = stored_hashes(body.encode())
            yield ChainLink(seq, doc_id, prev_hash, claimed, content, recorded_at)

    async def chain_pages(self, instance: str, from_seq: int, to_seq: int) -> AsyncIterator[list[StoredRecord]]:
        span = _SPAN

        def fetch(low: int) -> list[StoredRecord]:
            return read_chain_page(self.db, instance, low, min(low + span - 1, to_seq))

        low = from_seq
        pending = asyncio.ensure_future(self._run(functools.partial(fetch, low))) if low <= to_seq else None
        try:
            while pending is not None:
                page = await pending
                low += span
                # The store's thread reads the next page while this one is hashed.
                pending = asyncio.ensure_future(self._run(functools.partial(fetch, low))) if low <= to_seq else None
                if page:
                    yield page
        finally:
            if pending is not None:
                pending.cancel()

    async def _chain_rows(
        self, instance: str, from_seq: int, to_seq: int | None, columns: str
    ) -> AsyncIterator[tuple[Any, ...]]:
        """Rows `(seq, doc_id, *columns)` of one instance in chain order, a window of sequence
        numbers at a time (range scans on the index; LIMIT/OFFSET-style paging made SQLite sort)."""
        window = 5000

        def top() -> int:
            row = self.db.execute("SELECT MAX(seq) FROM records WHERE instance = ?", (instance,)).fetchone()
            return int(row[0]) if row and row[0] is not None else 0

        def page(low: int, high: int) -> list[tuple[Any, ...]]:
            rows: list[tuple[Any, ...]] = self.db.execute(
                f"SELECT seq, doc_id, {columns} FROM records WHERE instance = ? AND seq >= ? AND seq < ? "
                "ORDER BY seq, doc_id",
                (instance, low, high),
            ).fetchall()
            return rows

        last = await self._run(top)
        if to_seq is not None:
            last = min(last, to_seq)
        low = from_seq
        while low <= last:
            high = min(low + window, last + 1)
            for row in await self._run(functools.partial(page, low, high)):
                yield row
            low = high

    async def seq_range(self, instance: str, since: float | None, until: float | None) -> tuple[int, int] | None:
        def _range() -> tuple[int, int] | None:
            # Without bounds, the (instance, seq) index answers at once; with them, the
            # (instance, recorded_at) one is scanned over the range.
            where = "instance = ?"
            params: list[Any] = [instance]
            if since is not None:
                where += " AND recorded_at >= ?"
                params.append(since)
            if until is not None:
                where += " AND recorded_at <= ?"
                params.append(until)
            row = self.db.execute(f"SELECT MIN(seq), MAX(seq) FROM records WHERE {where}", params).fetchone()
            return None if row is None or row[0] is None else (int(row[0]), int(row[1]))

        return await self._run(_range)

    async def checkpoints(self, instance: str) -> list[dict[str, Any]]:
        return await self._run(
            lambda: [
                orjson.loads(b)
                for (b,) in self.db.execute("SELECT body FROM checkpoints WHERE instance = ? ORDER BY seq", (instance,))
            ]
        )

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Read-only SQL over the metadata columns, for store-side aggregation (reports)."""
        return await self._run(lambda: self.db.execute(sql, tuple(params)).fetchall())


def _where(query: SearchQuery) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for column, value in (
        ("model", query.model),
        ("operation", query.operation),
        ("outcome", query.outcome),
        ("status", query.status),
        ("user_index", query.user_index),
        ("api_key_id", query.api_key_id),
        ("kind", query.kind),
        ("instance", query.instance),
    ):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if query.since is not None:
        clauses.append("started_at >= ?")
        params.append(query.since)
    if query.until is not None:
        clauses.append("started_at <= ?")
        params.append(query.until)
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", params

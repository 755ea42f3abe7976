"""`EmbeddedStore`: the audit store when no Elasticsearch is configured — one SQLite file (WAL).

Besides each full document it keeps the metadata reports filter and aggregate on in columns
(time, model, operation, outcome, status, caller, tokens, latencies) so statistics are SQL, not
Python loops. Writes are `INSERT OR IGNORE` on the deterministic doc id: idempotent; a doc id
already stored with a different hash is reported as a `Fork`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import orjson

from sentinel.audit.keyring import WrappedKey
from sentinel.audit.record import stored_hashes
from sentinel.audit.store import ChainLink, Fork, SearchQuery, StoredRecord, StoreUnavailable

T = TypeVar("T")
log = logging.getLogger("sentinel.audit")

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


COLUMN_NAMES = tuple(name.strip() for name in _COLUMNS.split(","))[:-1]
"""The metadata columns (all but `body`): each is a copy of a field of the signed record."""


def record_columns(doc: dict[str, Any]) -> tuple[Any, ...]:
    """The metadata columns (`COLUMN_NAMES`) a stored document's row must hold."""
    i = doc.get("interaction") or {}
    usage = i.get("usage") or {}
    caller = i.get("caller") or {}
    return (
        doc.get("doc_id"),
        doc.get("instance"),
        doc.get("seq"),
        doc.get("kind"),
        doc.get("recorded_at"),
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
    )


def record_row(doc: dict[str, Any], body: bytes) -> tuple[Any, ...]:
    """The `records` table's row (`_COLUMNS`) for a stored document and its parsed form."""
    return (*record_columns(doc), body.decode())


def mismatched_columns(row: Sequence[Any], doc: dict[str, Any]) -> tuple[str, ...]:
    """Names of the columns of `row` (in `COLUMN_NAMES` order) that differ from the document's fields."""
    expected = record_columns(doc)
    if tuple(row) == expected:
        return ()
    return tuple(name for name, have, want in zip(COLUMN_NAMES, row, expected, strict=True) if have != want)


class _Caller(msgspec.Struct):
    api_key_id: Any = None
    user_index: Any = None


class _Usage(msgspec.Struct):
    input_tokens: Any = None
    output_tokens: Any = None


class _Interaction(msgspec.Struct):
    started_at: Any = None
    id: Any = None
    model_requested: Any = None
    operation: Any = None
    outcome: Any = None
    status_code: Any = None
    error_type: Any = None
    caller: _Caller | None = None
    stream: Any = None
    duration_s: Any = None
    ttft_s: Any = None
    usage: _Usage | None = None


class _Event(msgspec.Struct):
    type: Any = None
    time: Any = None


class _Columns(msgspec.Struct):
    """The fields of a stored record that the columns copy; the rest (content above all) is skipped
    unparsed, which makes this a third of the cost of parsing the whole record."""

    doc_id: Any = None
    instance: Any = None
    seq: Any = None
    kind: Any = None
    recorded_at: Any = None
    prev_hash: Any = None
    hash: Any = None
    interaction: _Interaction | None = None
    event: _Event | None = None


_COLUMNS_OF = msgspec.json.Decoder(_Columns)


def stored_columns(body: bytes) -> tuple[Any, ...] | None:
    """`record_columns` of a stored body, read without parsing the rest of it; None when the body
    is not a record of the expected shape (then `parse` and `record_columns` decide)."""
    try:
        r = _COLUMNS_OF.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    i, e = r.interaction, r.event
    caller, usage = (i.caller, i.usage) if i is not None else (None, None)
    return (
        r.doc_id,
        r.instance,
        r.seq,
        r.kind,
        r.recorded_at,
        i.started_at if i is not None else (e.time if e is not None else None),
        i.id if i is not None else None,
        i.model_requested if i is not None else None,
        i.operation if i is not None else None,
        i.outcome if i is not None else None,
        i.status_code if i is not None else None,
        i.error_type if i is not None else None,
        caller.api_key_id if caller is not None else None,
        caller.user_index if caller is not None else None,
        int(bool(i.stream)) if i is not None else None,
        i.duration_s if i is not None else None,
        i.ttft_s if i is not None else None,
        usage.input_tokens if usage is not None else None,
        usage.output_tokens if usage is not None else None,
        e.type if e is not None else None,
        r.prev_hash,
        r.hash,
    )


def parse(body: bytes | str) -> dict[str, Any]:
    """A stored body as a document; `{}` when it is not a JSON object (verification names it modified)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}


_SPAN = 2000


def read_chain_page(
    db: sqlite3.Connection, instance: str, low: int, high: int, *, documents: bool = True
) -> list[StoredRecord]:
    """Records of one chain with sequence numbers in [low, high], in `(seq, doc_id)` order, each one's
    metadata columns compared with its body; with `documents`, each body parsed (else `doc` is empty).

    By ranges of sequence numbers, not LIMIT: a second record claiming a sequence number lands on the
    same page as the first; `seq` order alone keeps SQLite on the (instance, seq) index without a
    sort (ties are ordered by doc id here)."""
    rows = db.execute(
        f"SELECT {_COLUMNS.removesuffix(', body')}, CAST(body AS BLOB) FROM records "
        "WHERE instance = ? AND seq >= ? AND seq <= ? ORDER BY seq",
        (instance, low, high),
    ).fetchall()
    page = []
    for row in rows:
        body = row[-1]
        doc = parse(body) if documents else {}
        columns = row[:-1]
        expected = record_columns(doc) if doc else stored_columns(body)
        if expected is None and not documents:  # not of the usual shape: parse it all
            whole = parse(body)
            expected = record_columns(whole) if whole else None
        if expected is None or columns == expected:
            mismatched: tuple[str, ...] = ()
        else:
            pairs = zip(COLUMN_NAMES, columns, expected, strict=True)
            mismatched = tuple(name for name, have, want in pairs if have != want)
        # seq, doc_id, prev_hash, recorded_at, kind, event_type: the columns the chain is walked by
        page.append(StoredRecord(row[2], row[0], row[20] or "", row[4], row[3], row[19], body, doc, mismatched))
    if any(page[i].seq == page[i + 1].seq for i in range(len(page) - 1)):
        page.sort(key=lambda record: (record.seq, record.doc_id))
    return page


def open_read_only(path: Path) -> sqlite3.Connection:
    """A plain read-only connection, for a worker process that reads without an event loop."""
    if not path.exists():
        raise StoreUnavailable(f"audit store {path} does not exist")
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


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

    def _write(self, sql: str, rows: list[tuple[Any, ...]], before: Callable[[], T] | None = None) -> T | None:
        """One transaction: `before` (reads that must see the table as the insert will) then the insert."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
            seen = before() if before is not None else None
            self.db.executemany(sql, rows)
            self.db.execute("COMMIT")
        except (sqlite3.Error, OSError) as exc:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
            raise StoreUnavailable(f"cannot write audit store {self.path}: {exc}") from exc
        return seen

    async def put_keys(self, keys: Sequence[dict[str, Any]]) -> None:
        rows = [(k["kid"], k["kek_id"], orjson.dumps(k).decode()) for k in keys]
        await self._run(lambda: self._write("INSERT OR IGNORE INTO keys (kid, kek_id, body) VALUES (?, ?, ?)", rows))

    async def put_records(self, docs: Sequence[tuple[str, bytes]]) -> list[Fork]:
        def _put() -> list[Fork]:
            rows = [record_row(orjson.loads(body), body) for _, body in docs]
            ours = {row[0]: row[21] for row in rows}  # doc_id: hash

            def stored() -> dict[str, str]:
                ids = list(ours)
                found: dict[str, str] = {}
                for start in range(0, len(ids), 500):
                    chunk = ids[start : start + 500]
                    marks = ", ".join("?" * len(chunk))
                    found.update(self.db.execute(f"SELECT doc_id, hash FROM records WHERE doc_id IN ({marks})", chunk))
                return found

            placeholders = ", ".join("?" * 23)
            theirs = self._write(f"INSERT OR IGNORE INTO records ({_COLUMNS}) VALUES ({placeholders})", rows, stored)
            return [Fork(doc_id, ours[doc_id], held) for doc_id, held in (theirs or {}).items() if held != ours[doc_id]]

        return await self._run(_put)

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
        """The record by doc id, else the interaction's completed record, as its body says (a row whose
        id columns were edited to point elsewhere is not taken for it)."""

        def _get() -> dict[str, Any] | None:
            for sql in (
                "SELECT body FROM records WHERE doc_id = ?",
                "SELECT body FROM records WHERE interaction_id = ? ORDER BY kind = 'interaction' DESC, seq DESC",
            ):
                for (body,) in self.db.execute(sql, (record_id,)):
                    doc = parse(body)
                    if record_id in (doc.get("doc_id"), (doc.get("interaction") or {}).get("id")):
                        return doc
            return None

        return await self._run(_get)

    async def search(self, query: SearchQuery) -> list[dict[str, Any]]:
        """Records matching `query` by their columns, each checked against its signed body: one whose
        columns were edited is left out (it does not match what was recorded) and logged; `audit
        verify` names it."""
        clauses, params = _where(query)
        sql = (
            f"SELECT {_COLUMNS.removesuffix(', body')}, body FROM records {clauses} "
            "ORDER BY started_at DESC, seq DESC LIMIT ?"
        )

        def _search() -> list[dict[str, Any]]:
            out, edited = [], []
            for row in self.db.execute(sql, (*params, query.limit)):
                doc = parse(row[-1])
                if not doc or mismatched_columns(row[:-1], doc):
                    edited.append(str(row[0]))
                    continue
                doc.pop("encrypted", None)
                out.append(doc)
            if edited:
                log.warning(
                    "audit search: %d record(s) left out whose stored columns differ from the signed record "
                    "(%s); run `sentinel audit verify`",
                    len(edited),
                    ", ".join(edited[:10]),
                )
            return out

        return await self._run(_search)

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

    async def chain_pages(
        self, instance: str, from_seq: int, to_seq: int, *, documents: bool = True
    ) -> AsyncIterator[list[StoredRecord]]:
        span = _SPAN

        def fetch(low: int) -> list[StoredRecord]:
            return read_chain_page(self.db, instance, low, min(low + span - 1, to_seq), documents=documents)

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

    async def callers_before(self, since: float) -> set[str]:
        rows = await self.execute(
            "SELECT DISTINCT api_key_id FROM records WHERE kind = 'interaction' AND started_at < ? "
            "AND api_key_id IS NOT NULL",
            (since,),
        )
        return {str(r[0]) for r in rows}

    async def span(self) -> dict[str, Any]:
        # `started_at` also holds an event's time: the interaction bounds are read over interactions only
        # (the oldest record is often the start-up `policy_change` event, not a call).
        (count, first_recorded, last_recorded), *_ = await self.execute(
            "SELECT COUNT(*), MIN(recorded_at), MAX(recorded_at) FROM records"
        )
        bound = (
            "SELECT started_at FROM records WHERE kind = 'interaction' AND started_at IS NOT NULL ORDER BY started_at"
        )
        oldest = next(iter(await self.execute(bound + " LIMIT 1")), (None,))[0]
        newest = next(iter(await self.execute(bound + " DESC LIMIT 1")), (None,))[0]
        return {
            "records": int(count),
            "oldest_started_at": oldest,
            "newest_started_at": newest,
            "oldest_recorded_at": first_recorded,
            "newest_recorded_at": last_recorded,
        }

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
        ("event_type", query.event_type),
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

"""Where shipped audit records live and are read back: Elasticsearch, or the embedded SQLite store.

Both implement `AuditStore`. Writes are idempotent (deterministic ids, create-only), so a retried
batch never duplicates a record; a different record already stored under an id is reported as a
`Fork`, never overwritten. Reads serve `audit search/show/verify`, reports and backups.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from sentinel.audit.keyring import WrappedKey


class ChainLink(NamedTuple):
    """What verification needs of one stored record (a tuple: millions are made and passed between
    processes)."""

    seq: int
    doc_id: str
    prev_hash: str
    claimed_hash: str
    """The `hash` field as stored."""
    content_hash: str
    """SHA-256 recomputed over the stored content."""
    recorded_at: float


class StoredRecord(NamedTuple):
    """One stored record as verification reads it: its chain fields and its stored bytes."""

    seq: int
    doc_id: str
    prev_hash: str
    recorded_at: float
    kind: str
    event_type: str | None
    body: bytes
    """The stored form (`sentinel.audit.record.encode`): canonical JSON with `hash` last."""
    doc: dict[str, Any]
    """`body` parsed (empty when it is not JSON): what reports count and columns are checked against."""
    mismatched: tuple[str, ...] = ()
    """Names of the store's own copies of fields (the embedded store's search columns) that differ
    from `doc`: each is a place where what a query sees is not what was signed."""


class Fork(NamedTuple):
    """A record the store refused because it already holds a different record under the same doc id:
    two writers claim one place in a chain (two instances sharing an `instance_id`). The store keeps
    its own; ours stays in the spool for an operator."""

    doc_id: str
    ours: str
    """Our record's `hash`."""
    theirs: str
    """The `hash` of the record the store holds under that id."""


class StoreUnavailable(Exception):
    """The store cannot be reached or refused a write; the shipper backs off and retries."""


@dataclass(slots=True)
class SearchQuery:
    """Filters over record metadata (all optional; combined with AND)."""

    since: float | None = None
    until: float | None = None
    model: str | None = None
    operation: str | None = None
    outcome: str | None = None
    status: int | None = None
    user_index: str | None = None
    api_key_id: str | None = None
    kind: str | None = None
    event_type: str | None = None
    instance: str | None = None
    limit: int = 100


class AuditStore(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def put_keys(self, keys: Sequence[dict[str, Any]]) -> None: ...

    async def put_records(self, docs: Sequence[tuple[str, bytes]]) -> list[Fork]:
        """Create each `(doc_id, stored form)`. A doc id already stored with the same hash is a
        duplicate (a retried batch) and not an error; one stored with a different hash is a fork,
        returned and left as the store has it. The rest of the batch is created either way."""

    async def put_checkpoints(self, docs: Sequence[dict[str, Any]]) -> None: ...

    async def keys(self) -> list[WrappedKey]: ...

    async def get(self, record_id: str) -> dict[str, Any] | None:
        """A record by its doc id (`instance:seq`) or by interaction id (the completed record)."""

    async def search(self, query: SearchQuery) -> list[dict[str, Any]]:
        """Newest first, documents without their `encrypted` part."""

    async def instances(self) -> list[str]: ...

    def chain(self, instance: str, from_seq: int = 1, to_seq: int | None = None) -> AsyncIterator[dict[str, Any]]:
        """Full documents of one instance in sequence order."""

    def chain_links(self, instance: str, from_seq: int = 1, to_seq: int | None = None) -> AsyncIterator[ChainLink]:
        """The chain fields of one instance's records in sequence order, hashes recomputed."""

    def chain_pages(
        self, instance: str, from_seq: int, to_seq: int, *, documents: bool = True
    ) -> AsyncIterator[list[StoredRecord]]:
        """One instance's stored records with sequence numbers in [from_seq, to_seq], in
        `(seq, doc_id)` order (every record claiming a sequence number, duplicates included), a page
        at a time. Without `documents` a store may leave `StoredRecord.doc` empty (verification alone
        needs only the bytes and the columns checked)."""

    async def seq_range(self, instance: str, since: float | None, until: float | None) -> tuple[int, int] | None:
        """First and last sequence numbers recorded in [since, until] (by `recorded_at`)."""

    async def checkpoints(self, instance: str) -> list[dict[str, Any]]: ...

    async def callers_before(self, since: float) -> set[str]:
        """API key ids of the interactions recorded before `since` (a report's "new caller" test)."""

    async def span(self) -> dict[str, Any]:
        """The whole store: record count, oldest and newest interaction start and record time."""

"""Restoring a database source into a live server instead of files: a dump into `psql`, an index
export into fresh Elasticsearch indices. Data streams from the repository; nothing is staged."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

from sentinel.backup.restore import RestoreError, Restorer
from sentinel.backup.snapshot import FileEntry, Snapshot


def _entry(snapshot: Snapshot, source: str, path: str) -> FileEntry:
    for entry in snapshot.files:
        if entry.source == source and entry.path == path:
            return entry
    raise RestoreError(f"snapshot {snapshot.id} has no {source}/{path}")


def _source_kind(snapshot: Snapshot, source: str, kind: str) -> None:
    record = snapshot.source(source)
    if record is None or record.kind != kind:
        raise RestoreError(f"snapshot {snapshot.id} has no {kind} source named {source!r}")


def restore_into_psql(restorer: Restorer, snapshot: Snapshot, source: str, dsn: str, *, psql: str = "psql") -> None:
    """Pipe the dump into `psql` in one transaction that stops at the first error (password: PGPASSWORD)."""
    _source_kind(snapshot, source, "postgres")
    entry = _entry(snapshot, source, "dump.sql")
    command = [psql, "--no-password", "--quiet", "-v", "ON_ERROR_STOP=1", "--single-transaction", "--dbname", dsn]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert process.stdin is not None and process.stderr is not None
    errors: list[bytes] = []
    reader = threading.Thread(target=lambda: errors.append(process.stderr.read()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        with ThreadPoolExecutor(restorer.concurrency) as pool:
            for data in restorer.stream(entry, pool):
                process.stdin.write(data)
                restorer.progress.advance(len(data))
        process.stdin.close()
    except BrokenPipeError:
        pass  # psql stopped early; its exit status and stderr say why
    except BaseException:
        process.kill()
        process.wait()
        raise
    code = process.wait()
    reader.join(timeout=10)
    process.stderr.close()
    if code != 0:
        message = b"".join(errors).decode(errors="replace").strip()
        raise RestoreError(f"psql failed (exit {code}) restoring {source}: {message[-500:]}")


def _lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    rest = b""
    for data in chunks:
        parts = (rest + data).split(b"\n")
        rest = parts.pop()
        yield from (p for p in parts if p)
    if rest:
        yield rest


def restore_into_elasticsearch(
    restorer: Restorer, snapshot: Snapshot, source: str, client: Any, *, suffix: str, batch: int = 1000
) -> dict[str, int]:
    """Create `<index><suffix>` for each exported index (refusing existing ones) and bulk-load its documents."""
    _source_kind(snapshot, source, "elasticsearch")
    record = snapshot.source(source)
    assert record is not None
    loaded: dict[str, int] = {}
    with ThreadPoolExecutor(restorer.concurrency) as pool:
        for index in sorted(record.meta.get("indices", {})):
            fresh = f"{index}{suffix}"
            if client.indices.exists(index=fresh):
                raise RestoreError(f"index {fresh} already exists; restore into a fresh index (--es-suffix)")
            definition = orjson.loads(b"".join(restorer.stream(_entry(snapshot, source, f"{index}/index.json"), pool)))
            client.indices.create(index=fresh, **definition)
            count = 0
            operations: list[dict[str, Any]] = []
            for line in _lines(restorer.stream(_entry(snapshot, source, f"{index}/documents.ndjson"), pool)):
                doc = orjson.loads(line)
                operations += [{"index": {"_index": fresh, "_id": doc["_id"]}}, doc["_source"]]
                if len(operations) >= 2 * batch:
                    count += _bulk(client, operations)
                    operations = []
            if operations:
                count += _bulk(client, operations)
            client.indices.refresh(index=fresh)
            loaded[fresh] = count
    return loaded


def _bulk(client: Any, operations: list[dict[str, Any]]) -> int:
    response = client.bulk(operations=operations)
    if response.get("errors"):
        failed = [i for i in response["items"] if next(iter(i.values())).get("error")]
        raise RestoreError(f"Elasticsearch refused {len(failed)} documents: {failed[0]}")
    return len(operations) // 2

"""Elasticsearch indices exported through a point in time (PIT) and `search_after`, as NDJSON.

A PIT pins one consistent view of the index for the whole export, and `search_after` on
`_shard_doc` pages through it without the 10,000-hit window or scroll contexts. Each index yields
`<index>/index.json` (mappings and analysis settings, to recreate it) and
`<index>/documents.ndjson` (one `{"_id", "_source"}` per line), streamed page by page.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import orjson

from sentinel.backup.settings import ElasticsearchSourceSettings
from sentinel.backup.sources import Source, SourceError, SourceItem
from sentinel.backup.sources.sqlite import parse_time


class IterStream:
    """A readable binary stream over an iterator of byte strings (readinto, as the chunker wants)."""

    def __init__(self, parts: Iterable[bytes]) -> None:
        self._parts = iter(parts)
        self._pending = memoryview(b"")

    def readinto(self, buffer: memoryview) -> int:
        while not self._pending:
            try:
                self._pending = memoryview(next(self._parts))
            except StopIteration:
                return 0
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count

    def close(self) -> None:
        close = getattr(self._parts, "close", None)
        if close is not None:
            close()


def es_client(url: str, spec: ElasticsearchSourceSettings | None = None, **extra: Any) -> Any:
    from elasticsearch import Elasticsearch

    kwargs: dict[str, Any] = {"request_timeout": 60, "retry_on_timeout": True, "max_retries": 3}
    if spec is not None:
        if spec.api_key is not None:
            kwargs["api_key"] = spec.api_key.get_secret_value()
        elif spec.username and spec.password is not None:
            kwargs["basic_auth"] = (spec.username, spec.password.get_secret_value())
        kwargs["verify_certs"] = spec.verify_tls
    kwargs.update(extra)
    return Elasticsearch(url, **kwargs)


class ElasticsearchSource(Source):
    kind = "elasticsearch"

    def __init__(self, name: str, spec: ElasticsearchSourceSettings, client: Any = None) -> None:
        super().__init__(name)
        self.spec = spec
        self._client = client

    def _documents(self, client: Any, index: str, counts: dict[str, int]) -> Iterator[bytes]:
        pit = client.open_point_in_time(index=index, keep_alive=self.spec.keep_alive)["id"]
        field = self.spec.timestamp_field
        try:
            search_after: list[Any] | None = None
            while True:
                body: dict[str, Any] = {
                    "size": self.spec.page_size,
                    "pit": {"id": pit, "keep_alive": self.spec.keep_alive},
                    "sort": [{"_shard_doc": "asc"}],
                    "track_total_hits": False,
                }
                if search_after is not None:
                    body["search_after"] = search_after
                response = client.search(**body)
                pit = response.get("pit_id", pit)  # the id may change between pages; always use the newest
                hits = response["hits"]["hits"]
                if not hits:
                    break
                lines = []
                for hit in hits:
                    source = hit.get("_source", {})
                    lines.append(orjson.dumps({"_id": hit["_id"], "_source": source}) + b"\n")
                    if field and (stamp := parse_time(source.get(field))) is not None:
                        newest = self.meta.get("newest_record")
                        self.meta["newest_record"] = stamp if newest is None else max(newest, stamp)
                counts[index] += len(hits)
                yield b"".join(lines)
                search_after = hits[-1]["sort"]
        finally:
            with contextlib.suppress(Exception):
                client.close_point_in_time(id=pit)

    @contextlib.contextmanager
    def _stream(self, client: Any, index: str, counts: dict[str, int]) -> Iterator[IO[bytes]]:
        stream = IterStream(self._documents(client, index, counts))
        try:
            yield stream  # type: ignore[misc]
        finally:
            stream.close()

    def items(self, scratch: Path) -> Iterator[SourceItem]:
        from elasticsearch import ApiError, NotFoundError, TransportError

        client = self._client or es_client(self.spec.url, self.spec)
        counts: dict[str, int] = {}
        self.meta["url"] = self.spec.url
        self.meta["timestamp_field"] = self.spec.timestamp_field
        try:
            try:
                found = client.indices.get(index=",".join(self.spec.indices), expand_wildcards="open")
            except NotFoundError:
                if self.spec.missing_ok:
                    self.meta["missing"] = True
                    return
                raise SourceError(f"source {self.name!r}: no index matches {self.spec.indices}") from None
            for index in sorted(found):
                described = found[index]
                analysis = described.get("settings", {}).get("index", {}).get("analysis")
                definition = {"mappings": described.get("mappings", {})}
                if analysis:
                    definition["settings"] = {"analysis": analysis}
                body = orjson.dumps(definition, option=orjson.OPT_INDENT_2)
                yield SourceItem(f"{index}/index.json", "file", opener=lambda b=body: _bytes_stream(b))  # type: ignore[misc]
                counts[index] = 0
                yield SourceItem(
                    f"{index}/documents.ndjson",
                    "file",
                    opener=lambda i=index: self._stream(client, i, counts),  # type: ignore[misc]
                )
            self.meta["indices"] = counts
        except (ApiError, TransportError) as exc:
            raise SourceError(f"source {self.name!r}: Elasticsearch at {self.spec.url} failed: {exc}") from exc
        finally:
            if self._client is None:
                client.close()


def _bytes_stream(data: bytes) -> IO[bytes]:
    import io

    return io.BytesIO(data)

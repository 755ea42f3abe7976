"""`ElasticsearchStore`: audit records in an Elasticsearch data stream, written create-only.

Layout (applied idempotently by `setup()` / `sentinel es setup`):
- data stream `<prefix>` (default `sentinel-audit`): one document per chain record, `_id` =
  `instance:seq`; index template with explicit mappings — metadata indexed, `encrypted` stored
  but not indexed (`enabled: false`); ILM policy `<prefix>`: rollover, then delete after the
  retention (default 6 years, HIPAA §164.316(b)(2));
- index `<prefix>-keys`: wrapped data keys, `_id` = `kid@kek_id` (a re-wrap adds documents,
  never overwrites), so the writer needs only `create_doc`;
- index `<prefix>-checkpoints`: signed chain checkpoints, `_id` = `instance:seq`.

Writes use `_bulk` `create`: a retried batch gets 409 for what already landed, so retries never
duplicate. A record's 409 is checked: the stored document's `hash` is read back (`_mget` on the
backing index that refused it: real-time, unlike a search) and a different one is a `Fork`. See
compose/elasticsearch/ for the least-privilege roles.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson
from elasticsearch import ApiError, AsyncElasticsearch, ConnectionError, TransportError

from sentinel.audit.keyring import WrappedKey
from sentinel.audit.record import digest, encode, stored_hashes
from sentinel.audit.store import ChainLink, Fork, SearchQuery, StoredRecord, StoreUnavailable

_KEYWORD = {"type": "keyword"}


def index_template(prefix: str, shards: int = 1, replicas: int = 1) -> dict[str, Any]:
    interaction = {
        "properties": {
            "id": _KEYWORD,
            "trace_id": _KEYWORD,
            "span_id": _KEYWORD,
            "started_at": {"type": "double"},
            "method": _KEYWORD,
            "path": _KEYWORD,
            "query": {"type": "keyword", "index": False},
            "instance": _KEYWORD,
            "schema_version": {"type": "integer"},
            "protocol": _KEYWORD,
            "operation": _KEYWORD,
            "provider": _KEYWORD,
            "stream": {"type": "boolean"},
            "model_requested": _KEYWORD,
            "model_returned": _KEYWORD,
            "sampling": {"type": "flattened"},
            "caller": {
                "properties": {
                    "api_key_id": _KEYWORD,
                    "address": {"type": "ip", "ignore_malformed": True},
                    "user_agent": _KEYWORD,
                    "user_index": _KEYWORD,
                }
            },
            "request_json_valid": {"type": "boolean"},
            "finish_reason": _KEYWORD,
            "usage": {
                "properties": {
                    "input_tokens": {"type": "long"},
                    "output_tokens": {"type": "long"},
                    "total_tokens": {"type": "long"},
                    "reasoning_tokens": {"type": "long"},
                    "source": _KEYWORD,
                }
            },
            "ttft_s": {"type": "double"},
            "duration_s": {"type": "double"},
            "upstream_duration_s": {"type": "double"},
            "overhead_s": {"type": "double"},
            "status_code": {"type": "short"},
            "upstream_status": {"type": "short"},
            "outcome": _KEYWORD,
            "error_type": _KEYWORD,
            "request_bytes": {"type": "long"},
            "response_bytes": {"type": "long"},
            "chunks": {"type": "integer"},
            "content_truncated": {"type": "boolean"},
            "annotations": {"type": "flattened"},
        }
    }
    return {
        "index_patterns": [prefix],
        "data_stream": {},
        "priority": 200,
        "template": {
            "settings": {
                "index.lifecycle.name": prefix,
                "number_of_shards": shards,
                "number_of_replicas": replicas,
            },
            "mappings": {
                "dynamic": False,
                "properties": {
                    "@timestamp": {"type": "date"},
                    "doc_id": _KEYWORD,
                    "instance": _KEYWORD,
                    "seq": {"type": "long"},
                    "prev_hash": {"type": "keyword", "index": False},
                    "hash": {"type": "keyword", "index": False},
                    "kind": _KEYWORD,
                    "schema_version": {"type": "integer"},
                    "recorded_at": {"type": "double"},
                    "interaction": interaction,
                    "event": {
                        "properties": {
                            "type": _KEYWORD,
                            "actor": _KEYWORD,
                            "details": {"type": "flattened"},
                            "time": {"type": "double"},
                        }
                    },
                    "encrypted": {"type": "object", "enabled": False},
                },
            },
        },
        "_meta": {"description": "Sentinel audit trail (hash-chained, content encrypted)", "managed_by": "sentinel"},
    }


def ilm_policy(retention_days: int, rollover_max_age: str = "30d", rollover_max_size: str = "50gb") -> dict[str, Any]:
    return {
        "phases": {
            "hot": {
                "actions": {"rollover": {"max_age": rollover_max_age, "max_primary_shard_size": rollover_max_size}}
            },
            "delete": {"min_age": f"{retention_days}d", "actions": {"delete": {}}},
        },
        "_meta": {"description": "Sentinel audit retention", "managed_by": "sentinel"},
    }


def _side_index_mappings() -> dict[str, Any]:
    return {"dynamic": False, "properties": {"instance": _KEYWORD, "seq": {"type": "long"}, "kid": _KEYWORD}}


class ElasticsearchStore:
    def __init__(
        self,
        client: AsyncElasticsearch,
        *,
        prefix: str = "sentinel-audit",
        retention_days: int = 2190,
        shards: int = 1,
        replicas: int = 1,
    ) -> None:
        self.client = client
        self.stream = prefix
        self.keys_index = f"{prefix}-keys"
        self.checkpoints_index = f"{prefix}-checkpoints"
        self.retention_days = retention_days
        self.shards = shards
        self.replicas = replicas

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        await self.client.close()

    async def setup(self) -> list[str]:
        """Create or update the ILM policy, template, data stream and side indices. Idempotent."""
        done = []
        try:
            await self.client.ilm.put_lifecycle(name=self.stream, policy=ilm_policy(self.retention_days))
            done.append(f"ILM policy {self.stream} (delete after {self.retention_days} days)")
            await self.client.indices.put_index_template(
                name=self.stream, **index_template(self.stream, self.shards, self.replicas)
            )
            done.append(f"index template {self.stream}")
            for name, coroutine in (
                (f"data stream {self.stream}", self.client.indices.create_data_stream(name=self.stream)),
                (
                    f"index {self.keys_index}",
                    self.client.indices.create(index=self.keys_index, mappings=_side_index_mappings()),
                ),
                (
                    f"index {self.checkpoints_index}",
                    self.client.indices.create(index=self.checkpoints_index, mappings=_side_index_mappings()),
                ),
            ):
                try:
                    await coroutine
                    done.append(f"created {name}")
                except ApiError as exc:
                    if exc.status_code == 400 and "already_exists" in str(exc.body):
                        done.append(f"{name} already exists")
                    else:
                        raise
        except (ApiError, TransportError) as exc:
            raise StoreUnavailable(f"Elasticsearch setup failed: {exc}") from exc
        return done

    # -- writing -----------------------------------------------------------------------------------
    async def _bulk(self, index: str, docs: Sequence[tuple[str, bytes | dict[str, Any]]]) -> list[tuple[str, str]]:
        """Create each doc; returns `(doc_id, backing index)` of those that already existed (409)."""
        if not docs:
            return []
        operations: list[Any] = []
        for doc_id, body in docs:
            operations.append({"create": {"_index": index, "_id": doc_id}})
            operations.append(orjson.loads(body) if isinstance(body, bytes) else body)
        try:
            response = await self.client.bulk(operations=operations)
        except (ApiError, ConnectionError, TransportError) as exc:
            raise StoreUnavailable(f"Elasticsearch bulk request failed: {exc}") from exc
        existing: list[tuple[str, str]] = []
        if response.get("errors"):
            for item in response["items"]:
                result = item.get("create", {})
                status = result.get("status", 0)
                if status == 409:
                    existing.append((str(result.get("_id")), str(result.get("_index") or index)))
                elif status not in (200, 201):
                    error = result.get("error", {})
                    raise StoreUnavailable(
                        f"Elasticsearch refused {result.get('_id')}: {status} "
                        f"{error.get('type')}: {error.get('reason')}"
                    )
        return existing

    async def put_keys(self, keys: Sequence[dict[str, Any]]) -> None:
        await self._bulk(self.keys_index, [(f"{k['kid']}@{k['kek_id']}", k) for k in keys])

    async def put_records(self, docs: Sequence[tuple[str, bytes]]) -> list[Fork]:
        existing = await self._bulk(self.stream, docs)
        if not existing:
            return []
        theirs = await self._stored_hashes(existing)
        bodies = dict(docs)
        forks = []
        for doc_id, _ in existing:
            ours = stored_hashes(bodies[doc_id])[0]
            if theirs[doc_id] != ours:
                forks.append(Fork(doc_id, ours, theirs[doc_id]))
        return forks

    async def _stored_hashes(self, docs: Sequence[tuple[str, str]]) -> dict[str, str]:
        """The stored `hash` of each `(doc_id, backing index)`, read in real time."""
        try:
            response = await self.client.mget(
                docs=[{"_index": index, "_id": doc_id} for doc_id, index in docs], source_includes="hash"
            )
        except (ApiError, ConnectionError, TransportError) as exc:
            raise StoreUnavailable(f"Elasticsearch multi get failed: {exc}") from exc
        hashes = {}
        for doc in response["docs"]:
            if not doc.get("found"):
                # Answered 409 a moment ago, now missing or failing: retry the batch rather than guess.
                reason = (doc.get("error") or {}).get("reason", "not found")
                raise StoreUnavailable(f"Elasticsearch reported {doc.get('_id')} as existing, then: {reason}")
            hashes[str(doc["_id"])] = str(doc["_source"].get("hash"))
        return hashes

    async def put_checkpoints(self, docs: Sequence[dict[str, Any]]) -> None:
        await self._bulk(self.checkpoints_index, [(d["doc_id"], d) for d in docs])

    # -- reading -----------------------------------------------------------------------------------
    async def _search(self, index: str, **kwargs: Any) -> list[dict[str, Any]]:
        try:
            response = await self.client.search(index=index, **kwargs)
        except ApiError as exc:
            if exc.status_code == 404:
                return []
            raise StoreUnavailable(f"Elasticsearch search failed: {exc}") from exc
        except TransportError as exc:
            raise StoreUnavailable(f"Elasticsearch search failed: {exc}") from exc
        return [hit for hit in response["hits"]["hits"]]

    async def keys(self) -> list[WrappedKey]:
        hits = await self._search(self.keys_index, query={"match_all": {}}, size=10_000)
        return [WrappedKey.from_dict(hit["_source"]) for hit in hits]

    async def get(self, record_id: str) -> dict[str, Any] | None:
        query = {"bool": {"should": [{"term": {"doc_id": record_id}}, {"term": {"interaction.id": record_id}}]}}
        hits = await self._search(self.stream, query=query, size=10, sort=[{"seq": "desc"}])
        if not hits:
            return None
        sources = [hit["_source"] for hit in hits]
        exact = [s for s in sources if s.get("doc_id") == record_id]
        completed = [s for s in sources if s.get("kind") == "interaction"]
        found: dict[str, Any] = (exact or completed or sources)[0]
        return found

    async def search(self, query: SearchQuery) -> list[dict[str, Any]]:
        filters: list[dict[str, Any]] = []
        for field, value in (
            ("interaction.model_requested", query.model),
            ("interaction.operation", query.operation),
            ("interaction.outcome", query.outcome),
            ("interaction.status_code", query.status),
            ("interaction.caller.user_index", query.user_index),
            ("interaction.caller.api_key_id", query.api_key_id),
            ("kind", query.kind),
            ("event.type", query.event_type),
            ("instance", query.instance),
        ):
            if value is not None:
                filters.append({"term": {field: value}})
        if query.since is not None or query.until is not None:
            bounds: dict[str, Any] = {"format": "epoch_second"}
            if query.since is not None:
                bounds["gte"] = query.since
            if query.until is not None:
                bounds["lte"] = query.until
            filters.append({"range": {"@timestamp": bounds}})
        hits = await self._search(
            self.stream,
            query={"bool": {"filter": filters}},
            size=query.limit,
            sort=[{"@timestamp": "desc"}, {"seq": "desc"}],
            source_excludes=["encrypted"],
        )
        return [hit["_source"] for hit in hits]

    async def instances(self) -> list[str]:
        try:
            response = await self.client.search(
                index=self.stream, size=0, aggs={"instances": {"terms": {"field": "instance", "size": 1000}}}
            )
        except ApiError as exc:
            if exc.status_code == 404:
                return []
            raise StoreUnavailable(f"Elasticsearch search failed: {exc}") from exc
        return [bucket["key"] for bucket in response["aggregations"]["instances"]["buckets"]]

    async def chain(self, instance: str, from_seq: int = 1, to_seq: int | None = None) -> AsyncIterator[dict[str, Any]]:
        bounds: dict[str, Any] = {"gte": from_seq}
        if to_seq is not None:
            bounds["lte"] = to_seq
        after: list[Any] | None = None
        while True:
            kwargs: dict[str, Any] = {
                "query": {"bool": {"filter": [{"term": {"instance": instance}}, {"range": {"seq": bounds}}]}},
                "size": 1000,
                "sort": [{"seq": "asc"}, {"doc_id": "asc"}],
            }
            if after is not None:
                kwargs["search_after"] = after
            hits = await self._search(self.stream, **kwargs)
            if not hits:
                return
            for hit in hits:
                yield hit["_source"]
            after = hits[-1]["sort"]

    async def chain_pages(
        self, instance: str, from_seq: int, to_seq: int, *, documents: bool = True
    ) -> AsyncIterator[list[StoredRecord]]:
        # Elasticsearch returns parsed documents: re-encode them in the stored form, which hashes to
        # the same digest as the bytes that were indexed (`hash` last after the canonical JSON).
        page: list[StoredRecord] = []
        async for doc in self.chain(instance, from_seq, to_seq):
            page.append(
                StoredRecord(
                    int(doc["seq"]),
                    str(doc["doc_id"]),
                    str(doc.get("prev_hash", "")),
                    float(doc.get("recorded_at", 0.0)),
                    str(doc.get("kind")),
                    (doc.get("event") or {}).get("type"),
                    encode(doc) if "hash" in doc else orjson.dumps(doc, option=orjson.OPT_SORT_KEYS),
                    doc,
                )
            )
            if len(page) >= 1000:
                yield page
                page = []
        if page:
            yield page

    async def chain_links(
        self, instance: str, from_seq: int = 1, to_seq: int | None = None
    ) -> AsyncIterator[ChainLink]:
        async for doc in self.chain(instance, from_seq, to_seq):
            yield ChainLink(
                doc["seq"],
                doc["doc_id"],
                doc.get("prev_hash", ""),
                str(doc.get("hash")),
                digest(doc),
                doc.get("recorded_at", 0.0),
            )

    async def seq_range(self, instance: str, since: float | None, until: float | None) -> tuple[int, int] | None:
        bounds: dict[str, Any] = {}
        if since is not None:
            bounds["gte"] = since
        if until is not None:
            bounds["lte"] = until
        filters: list[dict[str, Any]] = [{"term": {"instance": instance}}]
        if bounds:
            filters.append({"range": {"recorded_at": bounds}})
        try:
            response = await self.client.search(
                index=self.stream,
                size=0,
                query={"bool": {"filter": filters}},
                aggs={"first": {"min": {"field": "seq"}}, "last": {"max": {"field": "seq"}}},
            )
        except ApiError as exc:
            if exc.status_code == 404:
                return None
            raise StoreUnavailable(f"Elasticsearch search failed: {exc}") from exc
        first, last = response["aggregations"]["first"]["value"], response["aggregations"]["last"]["value"]
        return None if first is None else (int(first), int(last))

    async def _aggregate(self, **body: Any) -> dict[str, Any]:
        try:
            response = await self.client.search(index=self.stream, size=0, **body)
        except ApiError as exc:
            if exc.status_code == 404:
                return {"hits": {"total": {"value": 0}}, "aggregations": {}}
            raise StoreUnavailable(f"Elasticsearch search failed: {exc}") from exc
        except TransportError as exc:
            raise StoreUnavailable(f"Elasticsearch search failed: {exc}") from exc
        return dict(response)

    async def callers_before(self, since: float) -> set[str]:
        query = {
            "bool": {
                "filter": [{"term": {"kind": "interaction"}}, {"range": {"interaction.started_at": {"lt": since}}}]
            }
        }
        callers: set[str] = set()
        after: dict[str, Any] | None = None
        while True:
            composite: dict[str, Any] = {
                "size": 1000,
                "sources": [{"caller": {"terms": {"field": "interaction.caller.api_key_id"}}}],
            }
            if after is not None:
                composite["after"] = after
            response = await self._aggregate(query=query, aggs={"groups": {"composite": composite}})
            groups = (response.get("aggregations") or {}).get("groups") or {}
            callers.update(str(b["key"]["caller"]) for b in groups.get("buckets", []))
            after = groups.get("after_key")
            if not groups.get("buckets") or after is None:
                return callers

    async def span(self) -> dict[str, Any]:
        names = {
            "oldest_started_at": ("min", "interaction.started_at"),
            "newest_started_at": ("max", "interaction.started_at"),
            "oldest_recorded_at": ("min", "recorded_at"),
            "newest_recorded_at": ("max", "recorded_at"),
        }
        response = await self._aggregate(
            track_total_hits=True, aggs={name: {op: {"field": f}} for name, (op, f) in names.items()}
        )
        aggs = response.get("aggregations") or {}
        out: dict[str, Any] = {"records": int(response["hits"]["total"]["value"])}
        for name in names:
            out[name] = (aggs.get(name) or {}).get("value")
        return out

    async def checkpoints(self, instance: str) -> list[dict[str, Any]]:
        hits = await self._search(
            self.checkpoints_index, query={"term": {"instance": instance}}, size=10_000, sort=[{"seq": "asc"}]
        )
        return [hit["_source"] for hit in hits]

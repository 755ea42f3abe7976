"""A small stand-in for Elasticsearch: no Elasticsearch server can be installed here (none in Debian,
PyPI or npm), so this speaks the documented subset the backup uses, shaped from Elastic's REST API
reference (8.x/9.x): get index (`GET /<index>`, wildcards and comma lists), open point in time
(`POST /<index>/_pit?keep_alive=`), search with `pit`, `sort: [{"_shard_doc": "asc"}]`, `size` and
`search_after` (`POST /_search`, hits carry `sort` values and the response a `pit_id`), close point
in time (`DELETE /_pit`), index exists (`HEAD`), create index (`PUT`), `_bulk` (NDJSON `index`
actions) and `_refresh`. Every response carries `X-Elastic-Product: Elasticsearch`, which the
official client checks. A point in time freezes the documents as they were when it was opened;
`index_during_search` adds a document on every search to prove the export does not see it.

For the audit trail it also speaks: `PUT _ilm/policy/<name>`, `PUT _index_template/<name>`,
`PUT _data_stream/<name>` (400 `resource_already_exists_exception` the second time), `_bulk`
`create` actions (201, or 409 `version_conflict_engine_exception` for an existing `_id`, with
`errors: true`), multi get (`POST /_mget` with `docs` of `_index` and `_id`, or `/<index>/_mget`
with `ids`; `_source_includes`; `found: false` for a missing document, real-time like the real
one), and `POST /<index>/_search` with a `bool` query of `term`/`range`/`match_all`, `sort`, `size`,
`search_after`, `_source_excludes`, and `terms`/`min`/`max` aggregations.
`down = True` makes every request answer 503, as a cluster without a master does.
"""

from __future__ import annotations

import fnmatch
import operator
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.support.seaweed import free_ports

HEADERS = {"X-Elastic-Product": "Elasticsearch", "Content-Type": "application/json"}


@dataclass
class Index:
    mappings: dict[str, Any] = field(default_factory=dict)
    docs: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class FakeElasticsearch:
    url: str = ""
    indices: dict[str, Index] = field(default_factory=dict)
    pits: dict[str, list[tuple[str, dict[str, Any]]]] = field(default_factory=dict)
    index_during_search: str | None = None
    searches: int = 0
    templates: dict[str, Any] = field(default_factory=dict)
    policies: dict[str, Any] = field(default_factory=dict)
    data_streams: set[str] = field(default_factory=set)
    down: bool = False
    bulk_requests: int = 0
    lose_bulk_responses: int = 0
    """Accept this many `_bulk` requests but answer 503, as when a response is lost after the write."""

    def _resolve(self, expr: str) -> list[str] | None:
        names: list[str] = []
        for part in expr.split(","):
            if "*" in part:
                names += [n for n in self.indices if fnmatch.fnmatch(n, part)]
            elif part in self.indices:
                names.append(part)
            else:
                return None
        return sorted(set(names))


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, headers=HEADERS)


def _missing(name: str) -> web.Response:
    error = {"type": "index_not_found_exception", "reason": f"no such index [{name}]", "index": name}
    return _json({"error": {"root_cause": [error], **error}, "status": 404}, 404)


def _app(es: FakeElasticsearch) -> web.Application:
    async def get_index(request: web.Request) -> web.Response:
        expr = request.match_info["index"]
        names = es._resolve(expr)
        if names is None:
            return _missing(expr)
        return _json(
            {
                n: {"aliases": {}, "mappings": es.indices[n].mappings, "settings": {"index": {"number_of_shards": "1"}}}
                for n in names
            }
        )

    async def head_index(request: web.Request) -> web.Response:
        exists = request.match_info["index"] in es.indices
        return web.Response(status=200 if exists else 404, headers=HEADERS)

    async def put_index(request: web.Request) -> web.Response:
        name = request.match_info["index"]
        if name in es.indices:
            error = {"type": "resource_already_exists_exception", "reason": f"index [{name}] already exists"}
            return _json({"error": {"root_cause": [error], **error}, "status": 400}, 400)
        body = orjson.loads(await request.read() or b"{}")
        es.indices[name] = Index(mappings=body.get("mappings", {}))
        return _json({"acknowledged": True, "shards_acknowledged": True, "index": name})

    async def open_pit(request: web.Request) -> web.Response:
        names = es._resolve(request.match_info["index"])
        if names is None:
            return _missing(request.match_info["index"])
        if "keep_alive" not in request.query:
            return _json({"error": {"type": "action_request_validation_exception"}, "status": 400}, 400)
        pit = secrets.token_urlsafe(16)
        es.pits[pit] = [(doc_id, dict(doc)) for n in names for doc_id, doc in es.indices[n].docs.items()]
        return _json({"id": pit, "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0}})

    async def close_pit(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        freed = es.pits.pop(body["id"], None) is not None
        return _json({"succeeded": True, "num_freed": int(freed)})

    async def search(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        es.searches += 1
        if es.index_during_search:
            es.indices[es.index_during_search].docs[f"late-{es.searches}"] = {"late": True}
        pit = body.get("pit", {}).get("id")
        if pit not in es.pits or body.get("sort") != [{"_shard_doc": "asc"}]:
            return _json({"error": {"type": "search_phase_execution_exception"}, "status": 400}, 400)
        after = body.get("search_after", [-1])[0]
        docs = es.pits[pit]
        start = after + 1
        page = docs[start : start + int(body.get("size", 10))]
        hits = [{"_id": d, "_score": None, "_source": s, "sort": [start + i]} for i, (d, s) in enumerate(page)]
        return _json({"pit_id": pit, "timed_out": False, "hits": {"hits": hits}})

    async def bulk(request: web.Request) -> web.Response:
        es.bulk_requests += 1
        lines = [orjson.loads(line) for line in (await request.read()).splitlines() if line.strip()]
        items = []
        errors = False
        for action, source in zip(lines[::2], lines[1::2], strict=True):
            op, target = next(iter(action.items()))
            index = es.indices.setdefault(target["_index"], Index())
            if op == "create" and target["_id"] in index.docs:
                errors = True
                error = {
                    "type": "version_conflict_engine_exception",
                    "reason": f"[{target['_id']}]: version conflict, document already exists",
                }
                items.append({op: {"_index": target["_index"], "_id": target["_id"], "status": 409, "error": error}})
                continue
            index.docs[target["_id"]] = source
            items.append({op: {"_index": target["_index"], "_id": target["_id"], "status": 201, "result": "created"}})
        if es.lose_bulk_responses:
            es.lose_bulk_responses -= 1
            error = {"type": "es_rejected_execution_exception", "reason": "response lost"}
            return _json({"error": {"root_cause": [error], **error}, "status": 503}, 503)
        return _json({"errors": errors, "took": 1, "items": items})

    async def mget(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        default = request.match_info.get("index")
        wanted = [(d.get("_index", default), d["_id"]) for d in body["docs"]] if "docs" in body else []
        wanted += [(default, doc_id) for doc_id in body.get("ids", [])]
        includes = [f for f in request.query.get("_source_includes", "").split(",") if f]
        docs = []
        for index_name, doc_id in wanted:
            source = es.indices[index_name].docs.get(doc_id) if index_name in es.indices else None
            if source is None:
                docs.append({"_index": index_name, "_id": doc_id, "found": False})
                continue
            if includes:
                source = {k: v for k, v in source.items() if k in includes}
            docs.append({"_index": index_name, "_id": doc_id, "_version": 1, "found": True, "_source": source})
        return _json({"docs": docs})

    async def put_policy(request: web.Request) -> web.Response:
        es.policies[request.match_info["name"]] = orjson.loads(await request.read())
        return _json({"acknowledged": True})

    async def put_template(request: web.Request) -> web.Response:
        es.templates[request.match_info["name"]] = orjson.loads(await request.read())
        return _json({"acknowledged": True})

    async def put_data_stream(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name in es.data_streams:
            error = {"type": "resource_already_exists_exception", "reason": f"data_stream [{name}] already exists"}
            return _json({"error": {"root_cause": [error], **error}, "status": 400}, 400)
        if not any(fnmatch.fnmatch(name, p) for t in es.templates.values() for p in t.get("index_patterns", [])):
            error = {"type": "index_template_missing_exception", "reason": f"no matching index template for [{name}]"}
            return _json({"error": {"root_cause": [error], **error}, "status": 400}, 400)
        es.data_streams.add(name)
        es.indices.setdefault(name, Index())
        return _json({"acknowledged": True})

    async def index_search(request: web.Request) -> web.Response:
        expr = request.match_info["index"]
        names = es._resolve(expr)
        if names is None:
            return _missing(expr)
        body = orjson.loads(await request.read() or b"{}")
        docs = [(d, src) for n in names for d, src in es.indices[n].docs.items()]
        docs = [(d, src) for d, src in docs if _matches(src, body.get("query", {"match_all": {}}), d)]
        sort = body.get("sort", [])
        keys = [(next(iter(item)), _order(item)) for item in sort]
        for field_name, order in reversed(keys):
            docs.sort(key=lambda pair, f=field_name: _sort_value(pair, f), reverse=order == "desc")
        if "search_after" in body:
            after = body["search_after"]
            docs = [p for p in docs if _after([_sort_value(p, f) for f, _ in keys], after, [o for _, o in keys])]
        excludes = request.query.get("_source_excludes", "")
        hits = []
        for doc_id, src in docs[: int(body.get("size", 10))]:
            source = {k: v for k, v in src.items() if k not in excludes.split(",")} if excludes else src
            hits.append({"_id": doc_id, "_source": source, "sort": [_sort_value((doc_id, src), f)[1] for f, _ in keys]})
        response: dict[str, Any] = {"timed_out": False, "hits": {"total": {"value": len(docs)}, "hits": hits}}
        if "aggs" in body or "aggregations" in body:
            response["aggregations"] = _aggregate(docs, body.get("aggs") or body["aggregations"])
        return _json(response)

    async def refresh(request: web.Request) -> web.Response:
        return _json({"_shards": {"total": 1, "successful": 1, "failed": 0}})

    @web.middleware
    async def unavailable(request: web.Request, handler: Any) -> web.StreamResponse:
        if es.down:
            error = {"type": "master_not_discovered_exception", "reason": "no master"}
            return _json({"error": {"root_cause": [error], **error}, "status": 503}, 503)
        response: web.StreamResponse = await handler(request)
        return response

    app = web.Application(middlewares=[unavailable], client_max_size=64 * 1024 * 1024)
    app.router.add_put("/_ilm/policy/{name}", put_policy)
    app.router.add_put("/_index_template/{name}", put_template)
    app.router.add_put("/_data_stream/{name}", put_data_stream)
    app.router.add_post("/{index}/_search", index_search)
    app.router.add_get("/{index}/_search", index_search)
    app.router.add_post("/_search", search)
    app.router.add_delete("/_pit", close_pit)
    app.router.add_post("/_bulk", bulk)
    app.router.add_put("/_bulk", bulk)
    app.router.add_post("/_mget", mget)
    app.router.add_post("/{index}/_mget", mget)
    app.router.add_post("/{index}/_pit", open_pit)
    app.router.add_post("/{index}/_refresh", refresh)
    app.router.add_route("HEAD", "/{index}", head_index)
    app.router.add_get("/{index}", get_index, allow_head=False)
    app.router.add_put("/{index}", put_index)
    return app


def _field(source: dict[str, Any], path: str) -> Any:
    value: Any = source
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _matches(source: dict[str, Any], query: dict[str, Any], doc_id: str) -> bool:
    kind, spec = next(iter(query.items()))
    if kind == "match_all":
        return True
    if kind == "term":
        field_name, expected = next(iter(spec.items()))
        expected = expected["value"] if isinstance(expected, dict) else expected
        return _field(source, field_name) == expected or (field_name == "_id" and doc_id == expected)
    if kind == "range":
        field_name, bounds = next(iter(spec.items()))
        value = _field(source, field_name)
        if value is None:
            return False
        if field_name == "@timestamp":
            from datetime import datetime

            value = datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
        checks = {"gte": operator.ge, "gt": operator.gt, "lte": operator.le, "lt": operator.lt}
        return all(checks[op](value, float(bound)) for op, bound in bounds.items() if op in checks)
    if kind == "bool":
        musts = spec.get("filter", []) + spec.get("must", [])
        shoulds = spec.get("should", [])
        return all(_matches(source, q, doc_id) for q in musts) and (
            not shoulds or any(_matches(source, q, doc_id) for q in shoulds)
        )
    raise ValueError(f"query {kind} is not in the fake's subset")


def _order(item: dict[str, Any]) -> str:
    order = next(iter(item.values()))
    return str(order["order"] if isinstance(order, dict) else order)


def _sort_value(pair: tuple[str, dict[str, Any]], field_name: str) -> Any:
    value = pair[0] if field_name == "_id" else _field(pair[1], field_name)
    return (value is None, value if value is not None else 0)


def _after(values: list[Any], after: list[Any], orders: list[str]) -> bool:
    for value, bound, order in zip(values, after, orders, strict=False):
        bound_key = (bound is None, bound if bound is not None else 0)
        if value == bound_key:
            continue
        return value > bound_key if order == "asc" else value < bound_key
    return False


def _aggregate(docs: list[tuple[str, dict[str, Any]]], aggs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, spec in aggs.items():
        kind, params = next(iter(spec.items()))
        values = [_field(src, params["field"]) for _, src in docs]
        present = [v for v in values if v is not None]
        if kind == "terms":
            counts: dict[Any, int] = {}
            for v in present:
                counts[v] = counts.get(v, 0) + 1
            buckets = sorted(counts.items(), key=lambda kv: -kv[1])[: params.get("size", 10)]
            out[name] = {"buckets": [{"key": k, "doc_count": c} for k, c in buckets]}
        elif kind in ("min", "max"):
            out[name] = {"value": (min if kind == "min" else max)(present) if present else None}
        else:
            raise ValueError(f"aggregation {kind} is not in the fake's subset")
    return out


@asynccontextmanager
async def running_elasticsearch() -> AsyncIterator[FakeElasticsearch]:
    es = FakeElasticsearch()
    runner = web.AppRunner(_app(es), access_log=None)
    await runner.setup()
    (port,) = free_ports(1)
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    es.url = f"http://127.0.0.1:{port}"
    try:
        yield es
    finally:
        await runner.cleanup()

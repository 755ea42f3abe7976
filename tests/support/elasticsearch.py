"""A small stand-in for Elasticsearch: no Elasticsearch server can be installed here (none in Debian,
PyPI or npm), so this speaks the documented subset the backup uses, shaped from Elastic's REST API
reference (8.x/9.x): get index (`GET /<index>`, wildcards and comma lists), open point in time
(`POST /<index>/_pit?keep_alive=`), search with `pit`, `sort: [{"_shard_doc": "asc"}]`, `size` and
`search_after` (`POST /_search`, hits carry `sort` values and the response a `pit_id`), close point
in time (`DELETE /_pit`), index exists (`HEAD`), create index (`PUT`), `_bulk` (NDJSON `index`
actions) and `_refresh`. Every response carries `X-Elastic-Product: Elasticsearch`, which the
official client checks. A point in time freezes the documents as they were when it was opened;
`index_during_search` adds a document on every search to prove the export does not see it.
"""

from __future__ import annotations

import fnmatch
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
        lines = [orjson.loads(line) for line in (await request.read()).splitlines() if line.strip()]
        items = []
        for action, source in zip(lines[::2], lines[1::2], strict=True):
            target = action["index"]
            es.indices[target["_index"]].docs[target["_id"]] = source
            items.append({"index": {"_index": target["_index"], "_id": target["_id"], "status": 201}})
        return _json({"errors": False, "took": 1, "items": items})

    async def refresh(request: web.Request) -> web.Response:
        return _json({"_shards": {"total": 1, "successful": 1, "failed": 0}})

    app = web.Application()
    app.router.add_post("/_search", search)
    app.router.add_delete("/_pit", close_pit)
    app.router.add_post("/_bulk", bulk)
    app.router.add_put("/_bulk", bulk)
    app.router.add_post("/{index}/_pit", open_pit)
    app.router.add_post("/{index}/_refresh", refresh)
    app.router.add_route("HEAD", "/{index}", head_index)
    app.router.add_get("/{index}", get_index, allow_head=False)
    app.router.add_put("/{index}", put_index)
    return app


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

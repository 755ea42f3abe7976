"""A stand-in for the Elasticsearch search API, for report queries: no Elasticsearch server can be
installed here, so this speaks the documented subset `ElasticsearchStore` and `ElasticsearchQueries`
use, shaped from Elastic's REST API reference (8.x/9.x): `POST /<index>/_search` with `query` (bool
`filter`/`must_not`; `term`, `terms`, `range` with gte/lt/lte, `exists`), `sort` (+ `search_after`),
`size`, `track_total_hits`, and the aggregations `composite` (terms with `missing_bucket`, histogram
sources; `after`, `after_key`), `filter`, `sum`, `min`, `max`, `cardinality`, `missing`, `terms`
(ordered by count then key) and `histogram` (`interval`, `min_doc_count`). Bucket keys of histograms
are floor(value / interval) * interval, as Elasticsearch computes them. Every response carries
`X-Elastic-Product: Elasticsearch`, which the official client checks.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from aiohttp import web

from tests.support.seaweed import free_ports

HEADERS = {"X-Elastic-Product": "Elasticsearch", "Content-Type": "application/json"}
Doc = dict[str, Any]


def field(doc: Doc, path: str) -> Any:
    value: Any = doc
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def matches(doc: Doc, query: dict[str, Any] | None) -> bool:
    if not query:
        return True
    ((kind, spec),) = query.items()
    if kind == "match_all":
        return True
    if kind == "bool":
        return (
            all(matches(doc, q) for q in spec.get("filter", []) + spec.get("must", []))
            and not any(matches(doc, q) for q in spec.get("must_not", []))
            and (not spec.get("should") or any(matches(doc, q) for q in spec["should"]))
        )
    ((name, value),) = spec.items() if kind != "exists" else (("field", spec["field"]),)
    if kind == "term":
        return field(doc, name) == value
    if kind == "terms":
        return field(doc, name) in value
    if kind == "exists":
        return field(doc, value) is not None
    if kind == "range":
        v = field(doc, name)
        if v is None:
            return False
        return all(
            {"gte": v >= b, "gt": v > b, "lt": v < b, "lte": v <= b}[op] for op, b in value.items() if op != "format"
        )
    raise AssertionError(f"query {kind} is not in the stand-in")


def _hist_key(value: float, interval: float) -> float:
    return math.floor(value / interval) * interval


def aggregate(docs: list[Doc], aggs: dict[str, Any]) -> dict[str, Any]:
    return {name: _agg(docs, spec) for name, spec in aggs.items()}


def _agg(docs: list[Doc], spec: dict[str, Any]) -> dict[str, Any]:
    subs = spec.get("aggs", {})
    kind = next(k for k in spec if k != "aggs")
    body = spec[kind]
    if kind == "filter":
        chosen = [d for d in docs if matches(d, body)]
        return {"doc_count": len(chosen), **aggregate(chosen, subs)}
    if kind in ("sum", "min", "max"):
        values = [v for d in docs if (v := field(d, body["field"])) is not None]
        if kind == "sum":
            return {"value": float(sum(values))}
        return {"value": (min if kind == "min" else max)(values) if values else None}
    if kind == "cardinality":
        return {"value": len({v for d in docs if (v := field(d, body["field"])) is not None})}
    if kind == "missing":
        return {"doc_count": sum(1 for d in docs if field(d, body["field"]) is None)}
    if kind == "terms":
        groups: dict[Any, list[Doc]] = defaultdict(list)
        for d in docs:
            if (v := field(d, body["field"])) is not None:
                groups[v].append(d)
        ordered = sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))[: body.get("size", 10)]
        return {"buckets": [{"key": k, "doc_count": len(g), **aggregate(g, subs)} for k, g in ordered]}
    if kind == "histogram":
        groups = defaultdict(list)
        for d in docs:
            if (v := field(d, body["field"])) is not None:
                groups[_hist_key(v, body["interval"])].append(d)
        assert body.get("min_doc_count") == 1, "the stand-in leaves out empty histogram buckets"
        return {"buckets": [{"key": k, "doc_count": len(g), **aggregate(g, subs)} for k, g in sorted(groups.items())]}
    if kind == "composite":
        return _composite(docs, body, subs)
    raise AssertionError(f"aggregation {kind} is not in the stand-in")


def _composite(docs: list[Doc], body: dict[str, Any], subs: dict[str, Any]) -> dict[str, Any]:
    groups: dict[tuple[Any, ...], list[Doc]] = defaultdict(list)
    names = [next(iter(s)) for s in body["sources"]]
    for d in docs:
        key = []
        for source in body["sources"]:
            ((kind, spec),) = next(iter(source.values())).items()
            v = field(d, spec["field"])
            if v is None and not spec.get("missing_bucket"):
                break
            key.append(_hist_key(v, spec["interval"]) if kind == "histogram" and v is not None else v)
        else:
            groups[tuple(key)].append(d)

    def order(key: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple((v is not None, v) for v in key)  # missing values sort first

    keys = sorted(groups, key=order)
    if "after" in body:
        after = tuple(body["after"][n] for n in names)
        keys = [k for k in keys if order(k) > order(after)]
    page = keys[: body["size"]]
    buckets = [
        {"key": dict(zip(names, k, strict=True)), "doc_count": len(groups[k]), **aggregate(groups[k], subs)}
        for k in page
    ]
    out: dict[str, Any] = {"buckets": buckets}
    if page:
        out["after_key"] = buckets[-1]["key"]
    return out


class StandIn:
    def __init__(self) -> None:
        self.indices: dict[str, list[Doc]] = defaultdict(list)
        self.url = ""

    def search(self, index: str, body: dict[str, Any]) -> dict[str, Any]:
        docs = [d for d in self.indices.get(index, []) if matches(d, body.get("query"))]
        for spec in reversed(body.get("sort", [])):
            ((name, direction),) = spec.items()
            docs.sort(key=lambda d, n=name: (field(d, n) is not None, field(d, n)), reverse=direction == "desc")
        if "search_after" in body:
            names = [next(iter(s)) for s in body["sort"]]
            after = tuple(body["search_after"])
            docs = [d for d in docs if tuple(field(d, n) for n in names) > after]
        size = body.get("size", 10)
        hits = [
            {
                "_index": index,
                "_id": d.get("doc_id"),
                "_source": d,
                "sort": [field(d, next(iter(s))) for s in body.get("sort", [])],
            }
            for d in docs[:size]
        ]
        response: dict[str, Any] = {"hits": {"total": {"value": len(docs), "relation": "eq"}, "hits": hits}}
        if "aggs" in body:
            response["aggregations"] = aggregate(docs, body["aggs"])
        return response


@asynccontextmanager
async def running_standin() -> AsyncIterator[StandIn]:
    standin = StandIn()

    async def search(request: web.Request) -> web.Response:
        index = request.match_info["index"]
        if index not in standin.indices:
            error = {"type": "index_not_found_exception", "reason": f"no such index [{index}]"}
            return web.Response(body=orjson.dumps({"error": error, "status": 404}), status=404, headers=HEADERS)
        body = orjson.loads(await request.read() or b"{}")
        return web.Response(body=orjson.dumps(standin.search(index, body)), headers=HEADERS)

    app = web.Application()
    app.router.add_post("/{index}/_search", search)
    runner = web.AppRunner(app)
    await runner.setup()
    (port,) = free_ports(1)
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    standin.url = f"http://127.0.0.1:{port}"
    try:
        yield standin
    finally:
        await runner.cleanup()

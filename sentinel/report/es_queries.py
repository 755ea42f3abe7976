"""`ReportQueries` over Elasticsearch: the same questions as `EmbeddedQueries`, answered with aggregations
(composite for exact, paginated group-bys; filter, sum, min/max; histograms for latency bins) on the
`sentinel-audit` data stream's mapped metadata fields. Two figures are approximate by nature there:
the number of distinct end users (`cardinality`, exact up to 40,000) and the top users (`terms`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from elasticsearch import ApiError, TransportError

from sentinel.audit.store import StoreUnavailable
from sentinel.audit.store.elasticsearch import ElasticsearchStore
from sentinel.report.model import Period
from sentinel.report.queries import Breakdown, Bucket, LatencyBin, value_bin

IX = "interaction."
FAILED = {
    "bool": {
        "filter": [{"term": {IX + "outcome": "error"}}],
        "must_not": [{"term": {IX + "error_type": "upstream_4xx"}}],
    }
}
COUNTED = {"bool": {"must_not": [{"term": {IX + "outcome": "aborted"}}]}}
COUNTS = {"failed": {"filter": FAILED}, "counted": {"filter": COUNTED}}
# Latency bins (see queries.bin_sql) as histograms: one interval per decade.
SCALES = ((0.0, 1.0, 0.001), (1.0, 10.0, 0.01), (10.0, 100.0, 0.1), (100.0, None, 1.0))
KINDS: dict[str, tuple[str, list[dict[str, Any]]]] = {
    "ttft": (IX + "ttft_s", [{"term": {IX + "stream": True}}, {"exists": {"field": IX + "ttft_s"}}]),
    "generation": (
        IX + "duration_s",
        [
            {"term": {IX + "stream": False}},
            {"term": {IX + "outcome": "ok"}},
            {"terms": {IX + "operation": ["chat", "text_completion"]}},
        ],
    ),
    "embeddings": (
        IX + "duration_s",
        [
            {"term": {IX + "stream": False}},
            {"term": {IX + "outcome": "ok"}},
            {"term": {IX + "operation": "embeddings"}},
        ],
    ),
}


def _interactions(period: Period, *more: dict[str, Any]) -> dict[str, Any]:
    return {
        "bool": {
            "filter": [
                {"term": {"kind": "interaction"}},
                {"range": {IX + "started_at": {"gte": period.since, "lt": period.until}}},
                *more,
            ]
        }
    }


def _events(period: Period, *more: dict[str, Any]) -> dict[str, Any]:
    return {
        "bool": {
            "filter": [
                {"term": {"kind": "event"}},
                {"range": {"recorded_at": {"gte": period.since, "lt": period.until}}},
                *more,
            ]
        }
    }


class ElasticsearchQueries:
    def __init__(self, store: ElasticsearchStore) -> None:
        self.store = store

    async def _search(self, **body: Any) -> dict[str, Any]:
        try:
            response = await self.store.client.search(index=self.store.stream, **body)
        except ApiError as exc:
            if exc.status_code == 404:
                return {"hits": {"hits": [], "total": {"value": 0}}, "aggregations": {}}
            raise StoreUnavailable(f"Elasticsearch search failed: {exc}") from exc
        except TransportError as exc:
            raise StoreUnavailable(f"Elasticsearch search failed: {exc}") from exc
        return dict(response)

    async def _composite(
        self, query: dict[str, Any], sources: list[dict[str, Any]], aggs: dict[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        after: dict[str, Any] | None = None
        while True:
            composite: dict[str, Any] = {"size": 1000, "sources": sources}
            if after is not None:
                composite["after"] = after
            response = await self._search(size=0, query=query, aggs={"groups": {"composite": composite, "aggs": aggs}})
            groups = (response.get("aggregations") or {}).get("groups") or {}
            for bucket in groups.get("buckets", []):
                yield bucket
            after = groups.get("after_key")
            if not groups.get("buckets") or after is None:
                return

    async def breakdown(self, period: Period) -> list[Breakdown]:
        sources = [
            {name: {"terms": {"field": IX + field, "missing_bucket": True}}}
            for name, field in (("model", "model_requested"), ("operation", "operation"), ("outcome", "outcome"))
        ]
        aggs = {
            **COUNTS,
            "input": {"sum": {"field": IX + "usage.input_tokens"}},
            "output": {"sum": {"field": IX + "usage.output_tokens"}},
        }
        return [
            Breakdown(
                b["key"]["model"],
                b["key"]["operation"],
                b["key"]["outcome"],
                b["doc_count"],
                b["failed"]["doc_count"],
                b["counted"]["doc_count"],
                int(b["input"]["value"] or 0),
                int(b["output"]["value"] or 0),
            )
            async for b in self._composite(_interactions(period), sources, aggs)
        ]

    async def buckets(self, period: Period, seconds: int, *, by_caller: bool) -> list[Bucket]:
        sources: list[dict[str, Any]] = [{"at": {"histogram": {"field": IX + "started_at", "interval": seconds}}}]
        if by_caller:
            sources.insert(0, {"caller": {"terms": {"field": IX + "caller.api_key_id", "missing_bucket": True}}})
        return [
            Bucket(
                b["key"].get("caller"),
                int(b["key"]["at"] // seconds),
                b["doc_count"],
                b["failed"]["doc_count"],
                b["counted"]["doc_count"],
            )
            async for b in self._composite(_interactions(period), sources, COUNTS)
        ]

    async def users(self, period: Period, top: int) -> tuple[int, int, list[tuple[str, int, int]]]:
        field = IX + "caller.user_index"
        response = await self._search(
            size=0,
            query=_interactions(period),
            aggs={
                "distinct": {"cardinality": {"field": field, "precision_threshold": 40000}},
                "anonymous": {"missing": {"field": field}},
                "top": {
                    "terms": {"field": field, "size": top, "order": [{"_count": "desc"}, {"_key": "asc"}]},
                    "aggs": {"failed": {"filter": FAILED}},
                },
            },
        )
        aggs = response.get("aggregations") or {}
        if not aggs:
            return 0, 0, []
        return (
            int(aggs["distinct"]["value"]),
            int(aggs["anonymous"]["doc_count"]),
            [(str(b["key"]), b["doc_count"], b["failed"]["doc_count"]) for b in aggs["top"]["buckets"]],
        )

    async def callers_before(self, since: float) -> set[str]:
        query = {"bool": {"filter": [{"term": {"kind": "interaction"}}, {"range": {IX + "started_at": {"lt": since}}}]}}
        sources = [{"caller": {"terms": {"field": IX + "caller.api_key_id"}}}]
        return {str(b["key"]["caller"]) async for b in self._composite(query, sources, {})}

    async def latency_bins(self, period: Period) -> list[LatencyBin]:
        out: list[LatencyBin] = []
        for kind, (field, filters) in KINDS.items():
            scales = {
                f"s{i}": {
                    "filter": {"range": {field: {"gte": lo, **({"lt": hi} if hi is not None else {})}}},
                    "aggs": {"h": {"histogram": {"field": field, "interval": step, "min_doc_count": 1}}},
                }
                for i, (lo, hi, step) in enumerate(SCALES)
            }
            sources = [{"model": {"terms": {"field": IX + "model_requested", "missing_bucket": True}}}]
            async for group in self._composite(_interactions(period, *filters), sources, scales):
                for i, (_, _, step) in enumerate(SCALES):
                    for b in group[f"s{i}"]["h"]["buckets"]:
                        out.append(
                            LatencyBin(kind, group["key"]["model"], value_bin(b["key"] + step / 2), b["doc_count"])
                        )
        return out

    async def event_counts(self, period: Period) -> dict[str, int]:
        response = await self._search(
            size=0, query=_events(period), aggs={"types": {"terms": {"field": "event.type", "size": 1000}}}
        )
        buckets = ((response.get("aggregations") or {}).get("types") or {}).get("buckets", [])
        return {str(b["key"]): int(b["doc_count"]) for b in buckets}

    async def events(self, period: Period, types: Sequence[str], limit: int) -> list[dict[str, Any]]:
        response = await self._search(
            query=_events(period, {"terms": {"event.type": list(types)}}),
            sort=[{"recorded_at": "asc"}, {"doc_id": "asc"}],
            size=limit,
        )
        return [hit["_source"] for hit in response["hits"]["hits"]]

    async def span(self) -> dict[str, Any]:
        response = await self._search(
            size=0,
            track_total_hits=True,
            aggs={
                "oldest_started_at": {"min": {"field": IX + "started_at"}},
                "newest_started_at": {"max": {"field": IX + "started_at"}},
                "oldest_recorded_at": {"min": {"field": "recorded_at"}},
                "newest_recorded_at": {"max": {"field": "recorded_at"}},
            },
        )
        aggs = response.get("aggregations") or {}
        out: dict[str, Any] = {"records": int(response["hits"]["total"]["value"])}
        for name in ("oldest_started_at", "newest_started_at", "oldest_recorded_at", "newest_recorded_at"):
            out[name] = (aggs.get(name) or {}).get("value")
        return out

"""A report verifies the chains against the anchors when `audit.anchor` is configured, and says so. The
S3 is a real SeaweedFS with an Object Lock bucket, the time-stamps come from a real RFC 3161 authority
(`openssl ts`). The period reported on starts after the chain's first records: what was rewritten
before it shows only against the anchors.

These reports are issued on the machine's clock, not the dataset's: the S3 server refuses requests
signed at another time (RequestTimeTooSkewed). Only the integrity section is looked at."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import orjson
from prometheus_client import CollectorRegistry

from sentinel.audit.anchor.check import NOT_ANCHORED
from sentinel.audit.anchor.tsa import TimestampAuthority
from sentinel.audit.kek import LocalKeyFile
from sentinel.audit.keyring import KeyRing
from sentinel.audit.service import AuditService
from sentinel.audit.store.embedded import EmbeddedStore
from sentinel.report.issue import issue_report
from sentinel.report.model import FAILED_VERIFICATION, Period
from sentinel.report.render import render
from tests.report.conftest import Dataset
from tests.support.anchors import anchor_settings, checkpoints, object_lock_anchor, publish, rewrite
from tests.support.seaweed import Seaweed, free_ports
from tests.support.tsa import Tsa

SCHEMA = json.loads((Path(__file__).parents[2] / "sentinel" / "report" / "report.schema.json").read_text())
INSTANCE = "report-test"


def recorded_at(dataset: Dataset, seq: int) -> float:
    store = dataset.settings.resolve_path(dataset.settings.audit.store_path)
    with contextlib.closing(sqlite3.connect(store)) as db:
        (at,) = db.execute("SELECT recorded_at FROM records WHERE instance = ? AND seq = ?", (INSTANCE, seq)).fetchone()
    return float(at)


async def report(dataset: Dataset) -> dict[str, Any]:
    """A report from the 40th record of the main chain to now: the reports' own events, recorded on the
    machine's clock, fall in it."""
    service = AuditService(dataset.settings, CollectorRegistry(), INSTANCE, cli=True)
    await service.start()
    period = Period(recorded_at(dataset, 40), time.time())
    try:
        issued = await issue_report(service, period, "json", actor="cli:tester", include_reasons=False)
    finally:
        await service.stop()
    data: dict[str, Any] = orjson.loads(issued.body)
    jsonschema.validate(data, SCHEMA)
    return data


def rules(data: dict[str, Any]) -> list[str]:
    return sorted({f["rule"] for f in data["findings"] if f["section"] == "integrity"})


def chain(data: dict[str, Any], instance: str = INSTANCE) -> dict[str, Any]:
    found: dict[str, Any] = next(i for i in data["integrity"]["instances"] if i["instance"] == instance)
    return found


async def anchor(dataset: Dataset, seaweed: Seaweed, tsa: Tsa) -> tuple[Dataset, str, int]:
    """Every checkpoint of the dataset's store anchored with a token; the dataset configured to read them."""
    bucket = seaweed.bucket(lock=True)
    store = dataset.settings.resolve_path(dataset.settings.audit.store_path)
    anchored = [c for c in checkpoints(store) if c.get("note")]
    with object_lock_anchor(seaweed, bucket) as target:
        await publish(target, anchored, TimestampAuthority(tsa.url, tsa.ca_path))
    timestamp = {"url": tsa.url, "certificates": [str(tsa.ca_path)]}
    return dataset.configure(anchor=anchor_settings(seaweed, bucket), timestamp=timestamp), bucket, len(anchored)


async def test_a_report_verifies_against_the_anchors_and_finds_a_rewrite_before_its_period(
    clean: Dataset, fresh_copy: Callable[[Dataset], Dataset], seaweed: Seaweed, tsa: Tsa
) -> None:
    dataset, bucket, published = await anchor(fresh_copy(clean), seaweed, tsa)
    intact = await report(dataset)
    anchors = intact["integrity"]["anchors"]
    assert anchors["configured"] is True and anchors["anchored"] == published
    assert anchors["time_stamped"] == len(anchors["chains"])  # each chain's newest note and token read
    assert anchors["statement"].startswith(f"verified against {published} checkpoints anchored in s3://{bucket}/")
    assert "(Object Lock, COMPLIANCE), " in anchors["statement"] and "CN=Sentinel Test Root CA" in anchors["statement"]
    assert INSTANCE in {c["instance"] for c in anchors["chains"]}
    assert intact["integrity"]["ok"] is True and rules(intact) == []
    assert chain(intact)["first_seq"] == 40
    assert f"Anchors: {anchors['statement']}" in " ".join(render(intact, "md").decode().split())

    # The operator rewrites record 5, before the period, and re-signs everything with the real key, their
    # spool's copy gone too: a report of the period alone cannot tell.
    settings = dataset.settings
    store = settings.resolve_path(settings.audit.store_path)
    reader = EmbeddedStore(store, read_only=True)
    await reader.open()
    keyring = KeyRing(LocalKeyFile.load(settings.resolve_path(settings.key_file)), keys=await reader.keys())
    await reader.close()
    rewrite(store, INSTANCE, 5, keyring.signing_key())
    settings.resolve_path(settings.audit.spool_path).unlink()

    unanchored = await report(dataset.configure(anchor=None))
    assert unanchored["integrity"]["ok"] is True and rules(unanchored) == []
    assert unanchored["integrity"]["anchors"] == {
        "configured": False,
        "statement": NOT_ANCHORED,
        "anchored": 0,
        "time_stamped": 0,
        "chains": [],
    }

    found = await report(dataset.configure(anchor=anchor_settings(seaweed, bucket)))
    assert rules(found) == ["integrity.anchor_mismatch"]
    (mismatch,) = chain(found)["findings"]
    assert mismatch["kind"] == "anchor_mismatch" and mismatch["seq"] >= 5
    assert found["integrity"]["ok"] is False and found["integrity"]["mismatches"] == 1
    assert found["summary"]["verdict"] == FAILED_VERIFICATION


async def test_a_report_says_when_its_anchors_could_not_be_read(
    clean: Dataset, fresh_copy: Callable[[Dataset], Dataset], seaweed: Seaweed
) -> None:
    (port,) = free_ports(1)
    gone = anchor_settings(seaweed, "anchors", endpoint_url=f"http://127.0.0.1:{port}")
    data = await report(fresh_copy(clean).configure(anchor=gone))
    assert rules(data) == ["integrity.anchors_unreadable"]
    (finding,) = [f for f in data["findings"] if f["rule"] == "integrity.anchors_unreadable"]
    assert finding["severity"] == "high" and "cannot reach the S3 anchor" in finding["detail"]
    anchors = data["integrity"]["anchors"]
    assert anchors["configured"] is True and anchors["statement"].startswith(
        "not verified against the anchors, which could not be read: cannot reach the S3 anchor"
    )

"""Sections state the settings in force during the period, as the audit trail recorded them
(`settings_effective` events, which `sentinel serve` records at start), not those of the process running
the report; they say so, and say when they had to fall back to the current settings.

The attack: settings changed (or a report run with another config file) after the period make the period
look better or worse than it was. The recorded ones win; an altered record is not trusted."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path

import orjson
import yaml

from sentinel.config import load_settings
from sentinel.report.render import render
from tests.report.conftest import Dataset
from tests.report.dataset import settings_event, write_trail
from tests.report.shapes import Shape, build_shape

SECTIONS = ("scope", "transmission", "authentication", "retention")


def test_the_sections_state_the_recorded_settings(clean: Dataset) -> None:
    report = clean.report()
    for section in SECTIONS:
        stated = report[section]["settings"]
        assert stated["source"] == "audit trail", section
        assert stated["statement"].startswith("as recorded in the audit trail at ")
        (record,) = stated["records"]
        assert record["record"].startswith("report-test:") and record["digest"].startswith("sha256:")
    markdown, html = render(report, "md").decode(), render(report, "html").decode()
    assert markdown.count("Settings as recorded in the audit trail at ") == len(SECTIONS)
    assert html.count("Settings as recorded in the audit trail at ") == len(SECTIONS)


def test_settings_changed_after_the_period_do_not_change_it(
    clean: Dataset, fresh_copy: Callable[[Dataset], Dataset]
) -> None:
    """The config file now names a remote upstream over plain HTTP and a short retention: the period ran
    with the recorded ones (a loopback upstream, the embedded store), and the report says that."""
    dataset = fresh_copy(clean)
    data = yaml.safe_load(dataset.config.read_text())
    data["upstream"] = {"url": "http://10.20.30.40:8000"}
    dataset.config.write_text(yaml.safe_dump(data))
    dataset = Dataset(load_settings(dataset.config), dataset.planted, dataset.config, dataset.now)
    report = dataset.report()
    endpoints = [link["endpoint"] for link in report["transmission"]["links"]]
    assert endpoints == ["http://127.0.0.1:8000"]
    assert not [f for f in report["findings"] if f["rule"].startswith("transmission.")]
    assert any("127.0.0.1:8000" in s["detail"] for s in report["scope"]["systems"])


def test_without_a_record_the_report_falls_back_and_says_so() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        dataset = build_shape(Path(tmp) / "data", Shape(3600.0, 2))
        report = dataset.report()
    for section in SECTIONS:
        stated = report[section]["settings"]
        assert stated["source"] == "current settings" and stated["records"] == []
        assert stated["statement"].startswith("FALLBACK: no settings_effective event")
    assert "**Settings FALLBACK: no settings_effective event" in render(report, "md").decode()
    assert '<p class="bad">Settings FALLBACK: no settings_effective event' in render(report, "html").decode()


def test_a_change_in_the_period_is_listed_and_its_links_checked(
    clean: Dataset, fresh_copy: Callable[[Dataset], Dataset]
) -> None:
    """A restart in the period with a remote cleartext upstream: both settings are listed, and the link
    that was in force for part of the period is checked like the others."""
    dataset = fresh_copy(clean)
    data = yaml.safe_load(dataset.config.read_text())
    data["upstream"] = {"url": "http://10.20.30.40:8000"}
    changed = dataset.config.with_name("changed.yaml")
    changed.write_text(yaml.safe_dump(data))
    with dataset.at_dataset_time():
        restart = asyncio.run(_record(load_settings(changed)))
    report = dataset.report()
    stated = report["transmission"]["settings"]
    assert stated["source"] == "audit trail" and len(stated["records"]) == 2
    assert stated["records"][1]["record"] == restart
    assert "changed 1 time(s) in the period" in stated["statement"]
    endpoints = {link["endpoint"] for link in report["transmission"]["links"]}
    assert endpoints == {"http://127.0.0.1:8000", "http://10.20.30.40:8000"}
    assert [f["evidence"]["endpoint"] for f in report["findings"] if f["rule"] == "transmission.cleartext"] == [
        "http://10.20.30.40:8000"
    ]


async def _record(settings: object) -> str:
    import time

    service = await write_trail(settings, [], [settings_event(settings, time.time())])  # type: ignore[arg-type]
    try:
        assert service.shipper is not None
        await service.shipper.ship_once()
        return f"report-test:{service.trail.head.seq:012d}"
    finally:
        await service.stop()


def test_an_altered_settings_record_is_not_trusted(clean: Dataset, fresh_copy: Callable[[Dataset], Dataset]) -> None:
    """Someone edits the recorded settings in the store (a remote TLS-less upstream made to look local):
    the record's hash no longer holds, so the report does not state it as recorded."""
    dataset = fresh_copy(clean)
    store = dataset.settings.resolve_path(dataset.settings.audit.store_path)
    with contextlib.closing(sqlite3.connect(store)) as db:
        doc_id, body = db.execute(
            "SELECT doc_id, body FROM records WHERE kind = 'event' AND event_type = 'settings_effective'"
        ).fetchone()
        doc = orjson.loads(body)
        doc["event"]["details"]["settings"]["configuration"]["audit.mode"] = "strict-and-sound"
        db.execute("UPDATE records SET body = ? WHERE doc_id = ?", (orjson.dumps(doc).decode(), doc_id))
        db.commit()
    report = dataset.report()
    assert report["scope"]["configuration"]["audit.mode"] != "strict-and-sound"
    assert report["scope"]["settings"]["source"] == "current settings"
    assert f"the settings record {doc_id} in force at the start was altered" in report["scope"]["settings"]["statement"]

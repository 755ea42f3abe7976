"""Audit datasets with planted facts, written through the real code paths: `AuditService` seals and
ships interactions and events, `service.show` records a decrypt, `run_backup` and `RestoreDrill`
leave their runs and drill reports, and only then is the store tampered with by hand.

A dataset is built around a fixed instant, never the wall clock: `build` runs under `time_machine`
travelling to that instant, so every timestamp the real code takes (records, events, backups, drills)
lies on the dataset's own timeline, and the planted facts lie inside the period whatever the weekday."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import time_machine
import yaml
from prometheus_client import CollectorRegistry

from sentinel.audit.pins import pin_file_text
from sentinel.audit.record import INTERACTION, Event
from sentinel.audit.service import AuditService
from sentinel.audit.spool import Spool
from sentinel.audit.trail import Entry
from sentinel.backup.drill import RestoreDrill
from sentinel.backup.jobs import BackupContext, run_backup
from sentinel.backup.keys import create_key_file
from sentinel.config import Settings, load_settings
from sentinel.interaction import Caller, Interaction, Operation, Outcome, Protocol, Usage, new_interaction_id
from sentinel.report.configuration import SETTINGS_EFFECTIVE, effective

HOUR = 3600.0
DAY = 86400.0
ALPHA, BETA, GAMMA = "key-alpha00000001", "key-beta000000002", "key-gamma00000003"


PERIOD = 7 * DAY  # the report period: a whole week always holds every weekday hour
# The instants the report tests run at: just after a weekend, the last minute of a Sunday and of a
# year, and a leap day. `MONDAY` is the one most fixtures use.
INSTANTS = {
    "monday-0235": "2026-11-30T02:35:00Z",
    "sunday-2359": "2026-12-06T23:59:00Z",
    "new-year-eve-2359": "2026-12-31T23:59:00Z",
    "leap-day-1200": "2028-02-29T12:00:00Z",
}
MONDAY = INSTANTS["monday-0235"]


def instant(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def weekday_at(hour: int, now: float, *, lasting: float, since: float) -> float:
    """The most recent weekday `hour`:00 UTC whose next `lasting` seconds lie inside [since, now)."""
    day = int(now // DAY) * DAY
    for back in range(0, 8):
        t = day - back * DAY + hour * HOUR
        if since <= t and t + lasting <= now and time.gmtime(t).tm_wday < 5:
            return t
    raise AssertionError(f"no weekday {hour}:00 in the period ending {now}")


def call(started: float, key: str, user: str, *, outcome: Outcome = Outcome.OK, phi: bool = False) -> Interaction:
    error = outcome == Outcome.ERROR
    return Interaction(
        id=new_interaction_id(),
        started_at=started,
        method="POST",
        path="/v1/chat/completions",
        instance="report-test",
        protocol=Protocol.OPENAI,
        operation=Operation.CHAT,
        provider="openai",
        stream=True,
        model_requested="deepseek-r1",
        model_returned="deepseek-r1",
        caller=Caller(user=user, api_key_id=key, address="10.0.0.7", user_agent="dify"),
        request_messages=[{"role": "user", "content": f"question from {user}"}],
        response_text=None if error else "an answer",
        reasoning_text=None if error else "thinking",
        finish_reason=None if error else "stop",
        usage=Usage(input_tokens=12, output_tokens=0 if error else 30, total_tokens=42),
        ttft_s=None if error else 0.21,
        duration_s=0.5 if error else 2.5,
        status_code=502 if error else 200,
        upstream_status=502 if error else 200,
        outcome=outcome,
        error_type="upstream_5xx" if error else None,
        error_message="bad gateway" if error else None,
        annotations={
            "policy": {
                "version": "p1",
                "phi": {"request": {"mrn": 2, "dob": 1}},
                "actions": [{"action": "redact", "stage": "request", "count": 3}],
            }
        }
        if phi
        else {},
    )


@dataclass
class Planted:
    """What was planted, for the tests to expect."""

    since: float
    until: float
    counts: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    burst_hour: float | None = None
    error_burst_at: float | None = None
    tampered: str | None = None
    decrypted: str | None = None
    reason: str | None = None
    auth_failures: int = 0
    phi_records: int = 0


def settings_for(data_dir: Path, *, rto_target: float = 3600.0, models: Path | None = None) -> Settings:
    plans: dict[str, Any] = {
        "audit": {
            "sources": [{"kind": "sqlite", "name": "audit", "path": "audit/store.db"}, {"kind": "keys"}],
            "drill": {"rto_target": rto_target, "schedule": None, "checks": ["sentinel.audit.drill:audit_trail_check"]},
            "schedule": None,
        },
        "models": {
            "sources": [{"kind": "path", "name": "models", "path": str(models or data_dir / "models")}],
            "drill": {"schedule": None},
            "schedule": None,
        },
    }
    config = {
        "data_dir": str(data_dir),
        "instance_id": "report-test",
        "upstream": {"url": "http://127.0.0.1:8000"},
        "backup": {"plans": plans, "lease_ttl": 30},
        "audit": {"checkpoint_every": 50},
    }
    path = data_dir / "sentinel.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return load_settings(path)


def settings_event(settings: Settings, at: float) -> Event:
    """The event `sentinel serve` records at start: the settings in force (sentinel/server.py)."""
    snapshot = effective(settings)
    return Event(SETTINGS_EFFECTIVE, "system:startup", {"digest": snapshot["digest"], "settings": snapshot}, time=at)


async def write_trail(
    settings: Settings, calls: list[Interaction], events: list[Event], *, started: float | None = None
) -> AuditService:
    """Calls and events through a serving `AuditService`; with `started`, first the settings it started
    with, recorded then (as `sentinel serve` records them at start)."""
    service = AuditService(settings, CollectorRegistry(), "report-test")
    await service.start()
    if started is not None:
        await service.record_event(settings_event(settings, started))
    for start in range(0, len(calls), 64):
        await service.trail.append([Entry(INTERACTION, interaction=i) for i in calls[start : start + 64]])
    for event in events:
        await service.record_event(event)
    return service


def build(data_dir: Path, *, clean: bool, at: str = MONDAY, fresh: bool = False) -> tuple[Settings, Planted]:
    """A dataset over the week before `at` (plus history two weeks back); `clean=False` plants the facts.
    `fresh`: a deployment started just before the period, as `sentinel serve` starts one: its oldest
    record is the start-up `policy_change` event, and no call precedes the period.

    The period the tests report on is [since, until): `until` is the dataset's clock when it was done."""
    with time_machine.travel(instant(at), tick=True):
        return _build(data_dir, clean=clean, now=instant(at), fresh=fresh)


def startup_policy_event(at: float) -> Event:
    """The event `sentinel serve` records for the policy in force when it starts (sentinel/server.py)."""
    return Event(
        "policy_change",
        "system:startup",
        {
            "path": "policy.yaml",
            "outcome": "loaded",
            "old_digest": None,
            "new_digest": "sha256:" + "0" * 64,
            "error": None,
        },
        time=at,
    )


def _build(data_dir: Path, *, clean: bool, now: float, fresh: bool = False) -> tuple[Settings, Planted]:
    since = now - PERIOD
    planted = Planted(since=since, until=now)
    (data_dir / "keys").mkdir(parents=True, exist_ok=True)
    create_key_file(data_dir / "keys" / "backup.key")
    models = data_dir / "models"
    if clean:
        models.mkdir(parents=True, exist_ok=True)
        (models / "weights.bin").write_bytes(b"w" * 4096)
    settings = settings_for(data_dir, rto_target=3600.0 if clean else 1e-6, models=models)
    calls: list[Interaction] = []
    events: list[Event] = []
    if fresh:
        events.append(startup_policy_event(since - HOUR))
    else:
        # History: both regular callers were active before the period.
        calls += [call(now - 2 * PERIOD + i * 60, key, f"patient-{i}") for i, key in enumerate([ALPHA, BETA] * 3)]
    # Business-hours traffic: three per hour at most, weekday 09:00-16:59 UTC.
    base = weekday_at(9, now, lasting=8 * HOUR, since=since)
    for n in range(120):
        calls.append(call(base + (n % 8) * HOUR + (n // 8) * 60, ALPHA, f"patient-{n % 40}", phi=n % 30 == 0))
    for n in range(80):
        failed = n == 0  # one failure in 200: 0.5 %, at the warning level, not the alert
        calls.append(
            call(
                base + (n % 8) * HOUR + 1800 + (n // 8) * 60,
                BETA,
                f"patient-{100 + n % 25}",
                outcome=Outcome.ERROR if failed else Outcome.OK,
            )
        )
    planted.counts = {ALPHA: 120, BETA: 80}
    planted.failed = {ALPHA: 0, BETA: 1}
    planted.phi_records = 4
    if not clean:
        burst = weekday_at(2, now, lasting=HOUR, since=since)  # 02:00 UTC on a weekday: off hours
        planted.burst_hour = burst
        calls += [call(burst + i * 80, GAMMA, f"patient-{900 + i % 3}") for i in range(40)]
        planted.counts[GAMMA] = 40
        planted.failed[GAMMA] = 0
        planted.error_burst_at = base + 5 * HOUR + 10
        calls += [call(planted.error_burst_at + i * 10, BETA, "patient-100", outcome=Outcome.ERROR) for i in range(15)]
        planted.counts[BETA] += 15
        planted.failed[BETA] += 15
        events += [
            Event("admin_auth_failed", "client:10.9.9.9", {"reason": "invalid", "path": "/audit/records"})
            for _ in range(6)
        ]
        planted.auth_failures = 6
    calls.sort(key=lambda i: i.started_at)
    assert all(i.started_at < time.time() for i in calls), "a planted call lies in the dataset's future"
    planted.decrypted, planted.reason = asyncio.run(
        _write(settings, calls, events, decrypt=not clean, started=min([since - HOUR, *(i.started_at for i in calls)]))
    )
    settings = pin_keys(settings)
    backups = BackupContext(settings)
    run_backup(backups, "audit")
    run_backup(backups, "models")  # fails when the models directory is missing (not clean)
    RestoreDrill(backups, "audit").run()
    RestoreDrill(backups, "models").run()
    if not clean:
        planted.tampered = tamper(settings.resolve_path(settings.audit.store_path))
    planted.until = time.time()
    return settings, planted


async def _write(
    settings: Settings, calls: list[Interaction], events: list[Event], *, decrypt: bool, started: float
) -> tuple[str | None, str | None]:
    """Seal and ship the trail; with `decrypt`, show one ALPHA record's content with a reason."""
    service = await write_trail(settings, calls, events, started=started)
    try:
        if not decrypt:
            return None, None
        record = next(i for i in calls if i.caller.api_key_id == ALPHA)
        if service.shipper is not None:  # the record must be in the store to be shown
            await service.shipper.ship_once()
        reason = "billing dispute #4711"
        shown = await service.show(record.id, decrypt_content=True, actor="admin-api:alice", reason=reason)
        return str(shown["doc_id"]), reason
    finally:
        await service.stop()


PINS = "pins.txt"
"""The dataset's pin file, relative to its data directory (a copy of the directory keeps its own)."""


def pin_keys(settings: Settings) -> Settings:
    """Pin the deployment's checkpoint keys as an operator does for its auditors (`sentinel keys show
    --public` into a file that audit.pinned_keys names): the dataset's reports and drills trust only them."""
    spool = Spool(settings.resolve_path(settings.audit.spool_path))
    spool.run_sync(spool.open)
    try:
        (settings.data_dir / PINS).write_text(pin_file_text(spool.run_sync(spool.stored_keys)))
    finally:
        spool.close()
    return configure(settings.data_dir / "sentinel.yaml", pinned_keys=PINS)


def configure(config: Path, **audit: Any) -> Settings:
    """Change `audit` settings in a dataset's config file (None: back to the default) and load it again."""
    data = yaml.safe_load(config.read_text())
    data["audit"] = {**data.get("audit", {}), **audit}
    config.write_text(yaml.safe_dump(data))
    return load_settings(config)


def tamper(store: Path) -> str:
    """Change one stored interaction's model name in place (a sloppy cover-up: the hash is left alone)."""
    with contextlib.closing(sqlite3.connect(store)) as db:
        doc_id, body = db.execute(
            "SELECT doc_id, body FROM records WHERE kind = 'interaction' AND api_key_id = ? ORDER BY seq LIMIT 1 "
            "OFFSET 5",
            (ALPHA,),
        ).fetchone()
        doc = orjson.loads(body)
        doc["interaction"]["model_requested"] = "other-model"
        db.execute("UPDATE records SET body = ? WHERE doc_id = ?", (orjson.dumps(doc).decode(), doc_id))
        db.commit()
    return str(doc_id)

"""Datasets of any shape, for the property-based report tests: a period of any length ending at a fixed
instant, calls spread evenly over it (streamed or not, some failing, from a few callers), written by one
or several writers (chains) into one store, with the checkpoint keys pinned.

Records are written at the period's end, as a call's record is written when it ends (within
`report.late_records` of the period), so the period is exactly [since, until) and never the wall clock."""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import time_machine
import yaml
from prometheus_client import CollectorRegistry

from sentinel.audit.pins import pin_file_text
from sentinel.audit.record import INTERACTION
from sentinel.audit.service import AuditService
from sentinel.audit.spool import Spool
from sentinel.audit.trail import Entry
from sentinel.config import Settings, load_settings
from sentinel.interaction import Interaction, Outcome
from tests.report.conftest import Dataset
from tests.report.dataset import MONDAY, PINS, Planted, call, instant, startup_policy_event

CALLERS = ("key-alpha00000001", "key-beta000000002", "key-gamma00000003", "key-delta00000004")


@dataclass(frozen=True)
class Shape:
    seconds: float
    """The period's length."""
    calls: int
    streamed: bool = True
    failing_every: int = 0
    """Every n-th call fails with an upstream 502 (0: none fails)."""
    callers: int = 1
    chains: int = 1
    end: str = MONDAY


def _calls(shape: Shape, since: float, chain: int) -> list[Interaction]:
    out = []
    for n in range(chain, shape.calls, shape.chains):
        started = since + (n + 0.5) * shape.seconds / shape.calls
        failed = shape.failing_every > 0 and n % shape.failing_every == 0
        i = call(
            started, CALLERS[n % shape.callers], f"patient-{n % 7}", outcome=Outcome.ERROR if failed else Outcome.OK
        )
        if not shape.streamed:
            i = dataclasses.replace(i, stream=False, ttft_s=None)
        out.append(i)
    return out


def _writer_settings(settings_path: Path, chain: int) -> Settings:
    """The dataset's settings for writer `chain`: its own spool (one writer per chain), the shared store."""
    data = yaml.safe_load(settings_path.read_text())
    data["audit"] = {**data.get("audit", {}), "spool_path": f"audit/spool-{chain}.db"}
    path = settings_path.with_name(f"writer-{chain}.yaml")
    path.write_text(yaml.safe_dump(data))
    return load_settings(path)


async def _write(settings_path: Path, shape: Shape, since: float) -> list[Path]:
    spools = []
    for chain in range(shape.chains):
        settings = _writer_settings(settings_path, chain)
        service = AuditService(settings, CollectorRegistry(), f"shape-{chain}")
        await service.start()
        try:
            if chain == 0:
                await service.record_event(startup_policy_event(since - 60))
            calls = _calls(shape, since, chain)
            for start in range(0, len(calls), 64):
                await service.trail.append([Entry(INTERACTION, interaction=i) for i in calls[start : start + 64]])
        finally:
            await service.stop()
        spools.append(settings.resolve_path(settings.audit.spool_path))
    return spools


def build_shape(data_dir: Path, shape: Shape) -> Dataset:
    until = instant(shape.end)
    since = until - shape.seconds
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir / "sentinel.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(data_dir),
                "instance_id": "shape-0",
                "upstream": {"url": "http://127.0.0.1:8000"},
                "audit": {"checkpoint_every": 50},
            }
        )
    )
    with time_machine.travel(until, tick=True):
        spools = asyncio.run(_write(config, shape, since))
    keys = []
    for path in spools:
        spool = Spool(path)
        spool.run_sync(spool.open)
        try:
            keys += spool.run_sync(spool.stored_keys)
        finally:
            spool.close()
    (data_dir / PINS).write_text(pin_file_text(keys))
    data = yaml.safe_load(config.read_text())
    data["audit"]["pinned_keys"] = PINS
    config.write_text(yaml.safe_dump(data))
    dataset = Dataset(load_settings(config), Planted(since=since, until=until), config, until + 1.0)
    dataset.until = until
    return dataset

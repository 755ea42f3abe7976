"""`sentinel scheduler`: run the backup, drill and audit verification schedules (each run in its own process)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import click

from sentinel.cli import load, settings_options
from sentinel.config import Settings

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from sentinel.audit.schedule import VerifySchedule
    from sentinel.backup.scheduler import BackupScheduler


@click.command()
@click.option(
    "--metrics-port", type=int, help="Also serve the backup and verification metrics on this port (127.0.0.1)."
)
@click.option("--metrics-host", default="127.0.0.1", show_default=True)
@settings_options
def scheduler(
    metrics_port: int | None,
    metrics_host: str,
    config_file: Path | None,
    data_dir: Path | None,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Run scheduled backups, restore drills and audit verification (cron times from the settings).

    Use this where Sentinel's proxy does not run, or set backup.schedule_in_serve to let
    `sentinel serve` schedule backups instead. Audit verification runs here when
    audit.verify_in_serve is false. Stop with SIGTERM or Ctrl-C; a running backup finishes first.
    """
    import logging

    from prometheus_client import CollectorRegistry, start_http_server

    settings = load(config_file, data_dir=data_dir, log_level=log_level, log_format=log_format)
    log = logging.getLogger("sentinel.backup.scheduler")
    server = None
    if metrics_port is not None:
        registry = CollectorRegistry()
        register_metrics(settings, registry)
        server, _ = start_http_server(metrics_port, addr=metrics_host, registry=registry)
    runners = schedulers(settings)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    for runner in runners:
        runner.start()
    jobs = [job for runner in runners for job in runner.jobs()]
    for job in jobs:
        log.info("scheduled %s, next at %s", job["id"], job["next_run"])
    if not jobs:
        log.warning("nothing has a schedule; nothing to do until stopped")
    stop.wait()
    log.info("stopping the scheduler (waiting for running jobs)")
    for runner in runners:
        runner.shutdown(wait=True)
    if server is not None:
        server.shutdown()


def schedulers(settings: Settings) -> list[BackupScheduler | VerifySchedule]:
    """The backup and drill scheduler, and the verification schedule unless `sentinel serve` runs it."""
    from sentinel.audit.schedule import VerifySchedule, schedules
    from sentinel.backup.scheduler import BackupScheduler

    runners: list[BackupScheduler | VerifySchedule] = [BackupScheduler(settings)]
    if settings.audit.mode != "off" and not settings.audit.verify_in_serve and schedules(settings.audit):
        runners.append(VerifySchedule(settings))
    return runners


def register_metrics(settings: Settings, registry: CollectorRegistry) -> None:
    """What `--metrics-port` serves: backup and drill outcomes, and the verification checks' (read at scrape time)."""
    from sentinel.audit.schedule import intervals
    from sentinel.audit.watch import StateFile
    from sentinel.audit.watch_metrics import VerifyCollector
    from sentinel.backup.metrics import BackupCollector
    from sentinel.backup.state import RunLog

    registry.register(BackupCollector(RunLog(settings.resolve_path(settings.backup.state_file)), settings.backup.plans))
    if settings.audit.mode != "off":
        state = StateFile(settings.resolve_path(settings.audit.verify_state_file))
        registry.register(VerifyCollector(state, intervals(settings.audit)))

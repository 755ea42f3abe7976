"""`sentinel scheduler`: run the backup and drill schedules until stopped (each run in its own process)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import click

from sentinel.cli import load, settings_options


@click.command()
@click.option("--metrics-port", type=int, help="Also serve the backup metrics on this port (127.0.0.1).")
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
    """Run scheduled backups and restore drills (cron times from backup.plans.*.schedule).

    Use this where Sentinel's proxy does not run, or set backup.schedule_in_serve to let
    `sentinel serve` schedule instead. Stop with SIGTERM or Ctrl-C; a running backup finishes first.
    """
    import logging

    from prometheus_client import CollectorRegistry, start_http_server

    from sentinel.backup.metrics import BackupCollector
    from sentinel.backup.scheduler import BackupScheduler
    from sentinel.backup.state import RunLog

    settings = load(config_file, data_dir=data_dir, log_level=log_level, log_format=log_format)
    log = logging.getLogger("sentinel.backup.scheduler")
    server = None
    if metrics_port is not None:
        registry = CollectorRegistry()
        registry.register(
            BackupCollector(RunLog(settings.resolve_path(settings.backup.state_file)), settings.backup.plans)
        )
        server, _ = start_http_server(metrics_port, addr=metrics_host, registry=registry)
    runner = BackupScheduler(settings)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    runner.start()
    for job in runner.jobs():
        log.info("scheduled %s, next at %s", job["id"], job["next_run"])
    if not runner.jobs():
        log.warning("no plan has a schedule; nothing to do until stopped")
    stop.wait()
    log.info("stopping the scheduler (waiting for running jobs)")
    runner.shutdown(wait=True)
    if server is not None:
        server.shutdown()

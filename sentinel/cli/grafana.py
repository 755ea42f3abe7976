"""`sentinel grafana provision`: set up Grafana's datasources, folder, dashboards and alert rules."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from sentinel.cli import load, settings_options


@click.group()
def grafana() -> None:
    """Manage Sentinel's Grafana objects over the Grafana HTTP API."""


@grafana.command()
@click.option(
    "--alert-rules/--no-alert-rules",
    default=None,
    help="Also create Grafana-managed copies of the alert rules (env SENTINEL_GRAFANA_ALERT_RULES) [off].",
)
@click.option("--force", is_flag=True, help="Write every object even when it looks unchanged (e.g. a new password).")
@click.option(
    "--runbook-base", default="", metavar="URL", help="Prefix for runbook links (as for `sentinel generate`)."
)
@settings_options
def provision(
    alert_rules: bool | None,
    force: bool,
    runbook_base: str,
    config_file: Path | None,
    data_dir: Path | None,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Create or update the Prometheus (and Elasticsearch) datasources, the Sentinel folder, the dashboards
    and optionally Grafana-managed alert rules. Safe to run again: only differences are written.

    \b
    Grafana:      SENTINEL_GRAFANA_URL (default http://127.0.0.1:3000)
    Credentials:  SENTINEL_GRAFANA_TOKEN or SENTINEL_GRAFANA_TOKEN_FILE (service account token), or
                  SENTINEL_GRAFANA_USER with SENTINEL_GRAFANA_PASSWORD or SENTINEL_GRAFANA_PASSWORD_FILE
    Datasources:  SENTINEL_GRAFANA_PROMETHEUS_URL, SENTINEL_GRAFANA_ELASTICSEARCH_URL (and _USER,
                  _PASSWORD or _PASSWORD_FILE), as Grafana's server reaches them
    """
    settings = load(config_file, data_dir=data_dir, log_level=log_level, log_format=log_format)
    from sentinel.grafana.provision import ProvisionError
    from sentinel.grafana.provision import provision as run

    try:
        changes = run(settings.grafana, alert_rules=alert_rules, force=force, runbook_base=runbook_base)
    except ProvisionError as exc:
        click.echo(f"sentinel: {exc}", err=True)
        sys.exit(1)
    for change in changes:
        click.echo(str(change))
    written = sum(change.action != "unchanged" for change in changes)
    click.echo(f"Grafana at {settings.grafana.url}: {written} written, {len(changes) - written} unchanged")

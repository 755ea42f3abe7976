"""`sentinel generate`: regenerate alert rules, Grafana dashboards and their docs from sentinel/monitoring."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command()
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Repository root to write rules/, dashboards/ and docs/dashboards.md under.",
)
@click.option(
    "--runbook-base",
    default="",
    metavar="URL",
    help="Prefix for runbook links, e.g. https://git.example.org/ops/sentinel/blob/main/ (default: repo-relative).",
)
@click.option("--check", is_flag=True, help="Write nothing; exit 1 if any generated file is out of date.")
def generate(root: Path, runbook_base: str, check: bool) -> None:
    """Regenerate rules/sentinel.rules.yml, dashboards/*.json and docs/dashboards.md.

    Thresholds live once in sentinel/monitoring/thresholds.py; alerts and dashboard panels both
    read them. Commit the regenerated files; CI fails when they differ from the source.
    """
    from sentinel.monitoring.generate import generate as run

    changed = run(root, runbook_base=runbook_base, check=check)
    for path in changed:
        click.echo(f"{'out of date' if check else 'wrote'}: {path}")
    if check and changed:
        click.echo("run `make generate` and commit the result", err=True)
        sys.exit(1)
    if not changed:
        click.echo("generated files are up to date")

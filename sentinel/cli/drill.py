"""`sentinel drill run`: a measured restore drill (RTO, RPO, integrity checks) with a written report."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from sentinel.cli import settings_options
from sentinel.cli.backup import context_from, err, guarded, out, progress_bars


@click.group()
def drill() -> None:
    """Restore drills: prove the backups restore, and how fast."""


@drill.command("run")
@click.argument("plan", required=False)
@click.option(
    "--public-key",
    "pin_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Verify a restored audit trail against the keys this pin file pins (`sentinel keys show --public`) "
    "[audit.pinned_keys]; without either, the drill says it trusted the restored store's own keys.",
)
@settings_options
@guarded
def run(
    plan: str | None,
    pin_file: Path | None,
    config_file: Path | None,
    data_dir: Path | None,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Restore PLAN's latest snapshot into a scratch directory, verify it, measure RTO/RPO, write a report.

    Every plan if none is named. Exit status 1 if any drill failed a check or missed a target, 2 for
    wrong input (a bad pin file included).
    """
    from sentinel.backup.drill import RestoreDrill
    from sentinel.cli.keys import pins_from

    context = context_from(config_file, data_dir, log_level, log_format)
    if pin_file is not None:
        pins_from((pin_file,))  # a bad pin file is a usage error here, before any restore
        context.settings.audit.pinned_keys = pin_file.absolute()
    else:
        pins_from((), context.settings)
    plans = [plan] if plan else sorted(context.backup.plans)
    failed = False
    for name in plans:
        context.plan(name)
        with progress_bars() as progress:
            runner = RestoreDrill(context, name, progress=progress)
            report = runner.run()
        verdict = "[green]PASSED[/]" if report.passed else "[red]FAILED[/]"
        rto = f"{report.rto_seconds:.1f}s" if report.rto_seconds is not None else "-"
        rpo = f"{report.rpo_seconds:.0f}s" if report.rpo_seconds is not None else "-"
        out.print(
            f"drill {name}: {verdict} snapshot {report.snapshot or '-'}; RTO {rto} "
            f"(target {report.rto_target_seconds:.0f}s), RPO {rpo} (target {report.rpo_target_seconds:.0f}s, "
            f"{report.rpo_basis or 'n/a'})",
            highlight=False,
        )
        for check in report.checks:
            mark = "[green]ok[/]" if check.passed else "[red]FAILED[/]"
            out.print(f"  {mark} {check.name}: {check.detail}", highlight=False)
        for failure in report.failures:
            err.print(f"  [red]failure:[/] {failure}", highlight=False)
        out.print(f"  report: {runner.report_path}", highlight=False)
        failed = failed or not report.passed
    if failed:
        sys.exit(1)

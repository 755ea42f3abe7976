"""`sentinel backup ...`: key, run, list, show, verify, restore, prune — with progress bars on a terminal."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from sentinel.backup.progress import Progress as ProgressHook
from sentinel.cli import load, settings_options

F = TypeVar("F", bound=Callable[..., Any])
err = Console(stderr=True)
out = Console()
SKIPPED_EXIT = 3


class RichProgress(ProgressHook):
    """Draws each phase as a rich progress bar on stderr (nothing when stderr is not a terminal)."""

    def __init__(self, bar: Progress) -> None:
        self.bar = bar
        self.task: TaskID | None = None

    def begin(self, description: str, total: int | None) -> None:
        self.task = self.bar.add_task(description, total=total)

    def advance(self, amount: int) -> None:
        if self.task is not None:
            self.bar.advance(self.task, amount)

    def item(self, name: str) -> None:
        if self.task is not None:
            self.bar.update(self.task, description=name[-60:])

    def end(self) -> None:
        if self.task is not None:
            self.bar.remove_task(self.task)
            self.task = None


@contextmanager
def progress_bars() -> Iterator[RichProgress]:
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )
    with bar:
        yield RichProgress(bar)


def human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def fail(message: str, code: int = 1) -> None:
    err.print(f"[red]sentinel:[/] {message}", highlight=False)
    sys.exit(code)


def context_from(config_file: Path | None, data_dir: Path | None, log_level: str | None, log_format: str | None) -> Any:
    from sentinel.backup.jobs import BackupContext

    return BackupContext(load(config_file, data_dir=data_dir, log_level=log_level, log_format=log_format))


def guarded(func: F) -> F:
    """Operator-facing errors become one red line and exit status 1, not a traceback."""
    import functools

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from sentinel.backup.jobs import PlanNotFound
        from sentinel.backup.keys import KeyFileError
        from sentinel.backup.lease import LeaseHeld
        from sentinel.backup.repository import RepositoryError
        from sentinel.backup.restore import RestoreError
        from sentinel.backup.sources import SourceError
        from sentinel.backup.targets import TargetError

        try:
            return func(*args, **kwargs)
        except (PlanNotFound, KeyFileError, RepositoryError, RestoreError, SourceError, TargetError, LeaseHeld) as exc:
            fail(str(exc))

    return wrapper  # type: ignore[return-value]


def open_snapshot(context: Any, plan: str | None, snapshot: str) -> tuple[Any, Any]:
    """The plan's repository and SNAPSHOT in it (an id, a unique prefix or 'latest' of that plan)."""
    name = pick_plan(context, plan)
    repo = context.repository(name)
    return repo, repo.resolve(snapshot, name if snapshot == "latest" else None)


def pick_plan(context: Any, plan: str | None) -> str:
    plans = context.backup.plans
    if plan:
        context.plan(plan)
        return plan
    if len(plans) == 1:
        return str(next(iter(plans)))
    if "default" in plans:
        return "default"
    fail(f"several plans ({', '.join(sorted(plans))}): say which with --plan")
    raise AssertionError


plan_option = click.option("--plan", help="Which plan's repository (default: the only plan, or 'default').")


@click.group()
def backup() -> None:
    """Encrypted, deduplicated backups: audit store, keys, models, databases. See docs/backup.md."""


@backup.command("init-key")
@settings_options
@guarded
def init_key(config_file: Path | None, data_dir: Path | None, log_level: str | None, log_format: str | None) -> None:
    """Create the backup key file (mode 0600; SENTINEL_BACKUP_KEY_FILE, default <data_dir>/keys/backup.key).

    Keep a copy somewhere safe and apart from the backups: without it nothing can be restored.
    """
    from sentinel.backup.keys import create_key_file

    context = context_from(config_file, data_dir, log_level, log_format)
    key = create_key_file(context.key_path)
    out.print(f"created backup key {context.key_path} (key id {key.key_id}, mode 0600)")
    out.print("Keep a copy offline, apart from the backups: without it they cannot be restored.")


@backup.command("run")
@click.argument("plan", required=False)
@click.option("--scheduled-at", type=float, hidden=True, help="The cron time this run is for (set by the scheduler).")
@settings_options
@guarded
def run(
    plan: str | None,
    scheduled_at: float | None,
    config_file: Path | None,
    data_dir: Path | None,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Take a snapshot of PLAN now (every plan if none is named).

    Exit status 0 when done, 1 when a run failed, 3 when skipped because another instance is running
    the plan (or already took this scheduled snapshot).
    """
    from sentinel.backup.jobs import run_backup

    context = context_from(config_file, data_dir, log_level, log_format)
    plans = [plan] if plan else sorted(context.backup.plans)
    outcomes = []
    for name in plans:
        context.plan(name)
        with progress_bars() as progress:
            outcome = run_backup(context, name, progress=progress, scheduled_for=scheduled_at)
        outcomes.append(outcome.outcome)
        took = outcome.finished - outcome.started
        if outcome.outcome == "success" and outcome.snapshot and outcome.stats:
            stats = outcome.stats
            out.print(
                f"[green]snapshot {outcome.snapshot.id}[/] of plan {name}: {len(outcome.snapshot.files)} items, "
                f"{human(outcome.snapshot.size)}; read {human(stats.bytes_read)}, "
                f"unchanged {human(stats.bytes_unchanged)}, uploaded {human(stats.uploaded_bytes)} "
                f"({stats.chunks_new} new chunks, {stats.chunks_reused} reused) in {took:.1f}s",
                highlight=False,
            )
        elif outcome.outcome == "skipped":
            out.print(f"[yellow]skipped[/] plan {name}: {outcome.error}", highlight=False)
        else:
            err.print(f"[red]backup of plan {name} failed[/] after {took:.1f}s: {outcome.error}", highlight=False)
    if "failure" in outcomes:
        sys.exit(1)
    if all(o == "skipped" for o in outcomes):
        sys.exit(SKIPPED_EXIT)


@backup.command("list")
@plan_option
@settings_options
@guarded
def list_(
    plan: str | None, config_file: Path | None, data_dir: Path | None, log_level: str | None, log_format: str | None
) -> None:
    """List the complete snapshots in a plan's repository (every plan stored there).

    Exit 1 if a snapshot is damaged, or missing although the signed snapshot index names it."""
    context = context_from(config_file, data_dir, log_level, log_format)
    repo = context.repository(pick_plan(context, plan))
    catalog = repo.catalog()
    table = Table(title=f"Snapshots in {repo.target.describe()}")
    for column in ("snapshot", "plan", "finished", "items", "size", "uploaded", "host"):
        table.add_column(column)
    for snap in catalog.snapshots:
        table.add_row(
            snap.id,
            snap.plan,
            when(snap.finished),
            str(len(snap.files)),
            human(snap.size),
            human(snap.uploaded_bytes),
            snap.hostname,
        )
    for snapshot_id in sorted(catalog.damaged):
        table.add_row(snapshot_id, "?", "[red]DAMAGED[/]", "", "", "", "")
    for snapshot_id, snapshot_plan in sorted(catalog.missing.items()):
        table.add_row(snapshot_id, snapshot_plan, "[red]MISSING[/]", "", "", "", "")
    for snapshot_id, lost in sorted(catalog.lost.items()):
        table.add_row(snapshot_id, str(lost.get("plan", "")), "lost (acknowledged)", "", "", "", "")
    out.print(table)
    report_catalog(catalog)
    if not catalog.intact:
        sys.exit(1)


def report_catalog(catalog: Any) -> None:
    """Tampering survived as warnings, damaged and missing snapshots as problems (on stderr)."""
    for note in catalog.notes:
        err.print(f"[yellow]warning:[/] {note}", highlight=False)
    for problem in catalog.problems():
        err.print(f"[red]problem:[/] {problem}", highlight=False)
    for line in catalog.acknowledged():
        err.print(f"acknowledged: {line}", highlight=False)


@backup.command("show")
@click.argument("snapshot")
@click.option("--files/--no-files", default=False, help="List every file with its size and SHA-256.")
@plan_option
@settings_options
@guarded
def show(
    snapshot: str,
    files: bool,
    plan: str | None,
    config_file: Path | None,
    data_dir: Path | None,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Show a snapshot's manifest (SNAPSHOT: id, unique prefix or 'latest')."""
    context = context_from(config_file, data_dir, log_level, log_format)
    _, snap = open_snapshot(context, plan, snapshot)
    out.print(f"snapshot   {snap.id}\nplan       {snap.plan}\nhost       {snap.hostname}", highlight=False)
    out.print(f"started    {when(snap.started)}\nfinished   {when(snap.finished)}", highlight=False)
    out.print(f"size       {human(snap.size)} in {len(snap.files)} items; uploaded {human(snap.uploaded_bytes)}")
    out.print(f"chunks     {len(snap.chunk_ids())} distinct")
    for source in snap.sources:
        out.print(f"source     {source.name} ({source.kind}) {source.meta}", highlight=False)
    if files:
        table = Table()
        for column in ("source", "path", "type", "size", "sha256"):
            table.add_column(column)
        for entry in snap.files:
            table.add_row(entry.source, entry.path, entry.type, human(entry.size), entry.sha256[:16])
        out.print(table)


@backup.command("verify")
@click.argument("snapshot")
@click.option("--read-data", is_flag=True, help="Download, decrypt and authenticate every chunk.")
@plan_option
@settings_options
@guarded
def verify(
    snapshot: str,
    read_data: bool,
    plan: str | None,
    config_file: Path | None,
    data_dir: Path | None,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Check that every chunk of SNAPSHOT is present (and, with --read-data, authentic). Exit 1 if not."""
    from sentinel.backup.verify import verify_snapshot

    context = context_from(config_file, data_dir, log_level, log_format)
    repo, snap = open_snapshot(context, plan, snapshot)
    with progress_bars() as progress:
        report = verify_snapshot(repo, snap, read_data=read_data, progress=progress)
    for problem in report.problems:
        err.print(f"[red]problem:[/] {problem.describe()}", highlight=False)
    catalog = repo.catalog()
    report_catalog(catalog)
    depth = "present, authentic and matching their SHA-256" if read_data else "present with the right sizes"
    if not catalog.intact:
        fail(f"snapshot {snap.id}: {len(report.problems)} problems; the repository: {len(catalog.problems())}")
    if report.ok:
        out.print(f"snapshot {snap.id}: {report.chunks_checked} chunks of {report.files_checked} files {depth}")
    else:
        fail(f"snapshot {snap.id}: {len(report.problems)} problems")


@backup.command("restore")
@click.argument("snapshot")
@click.option("--target", "dest", type=click.Path(file_okay=False, path_type=Path), help="Empty directory for files.")
@click.option("--source", "only", multiple=True, help="Restore only these sources (repeatable).")
@click.option("--psql", metavar="DSN", help="Load a postgres source's dump into this database (password: PGPASSWORD).")
@click.option("--es-url", metavar="URL", help="Load elasticsearch sources into this cluster as fresh indices.")
@click.option("--es-suffix", default=None, help="Suffix for restored index names [-restored-<time>].")
@plan_option
@settings_options
@guarded
def restore(
    snapshot: str,
    dest: Path | None,
    only: tuple[str, ...],
    psql: str | None,
    es_url: str | None,
    es_suffix: str | None,
    plan: str | None,
    config_file: Path | None,
    data_dir: Path | None,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Restore SNAPSHOT ('latest', an id or a unique prefix).

    \b
    --target DIR    files into DIR/<source>/... (the audit store as a fresh SQLite file,
                    a database as DIR/<source>/dump.sql, indices as NDJSON)
    --psql DSN      a postgres source straight into a database, in one transaction
    --es-url URL    elasticsearch sources into fresh indices named <index><suffix>
    """
    from sentinel.backup.restore import Restorer
    from sentinel.backup.restore_into import restore_into_elasticsearch, restore_into_psql

    if not (dest or psql or es_url):
        fail("say where to: --target DIR, --psql DSN or --es-url URL", 2)
    context = context_from(config_file, data_dir, log_level, log_format)
    repo, snap = open_snapshot(context, plan, snapshot)
    kinds = {s.name: s.kind for s in snap.sources}
    for wanted in only:
        if wanted not in kinds:
            fail(f"snapshot {snap.id} has no source {wanted!r} (it has: {', '.join(kinds)})")
    chosen = set(only or kinds)
    live = {n for n in chosen if (psql and kinds[n] == "postgres") or (es_url and kinds[n] == "elasticsearch")}
    with progress_bars() as progress:
        restorer = Restorer(repo, concurrency=context.backup.upload_concurrency, progress=progress)
        for source in sorted(live):
            if kinds[source] == "postgres":
                assert psql is not None
                restore_into_psql(restorer, snap, source, psql)
                out.print(f"restored {source} into {psql}")
            else:
                from sentinel.backup.sources.elasticsearch import es_client

                suffix = es_suffix or "-restored-" + datetime.now(UTC).strftime("%Y%m%dt%H%M%S")
                with es_client(str(es_url)) as client:
                    loaded = restore_into_elasticsearch(restorer, snap, source, client, suffix=suffix)
                for index, count in loaded.items():
                    out.print(f"restored {count} documents into index {index}")
        rest = chosen - live
        if rest and dest is not None:
            result = restorer.restore(snap, dest, select=lambda e: e.source in rest)
            out.print(
                f"restored {result.files} files ({human(result.bytes)}) of snapshot {snap.id} into {dest}; "
                f"all {result.verified} SHA-256 verified"
            )
        elif rest:
            fail(f"sources {', '.join(sorted(rest))} need --target DIR")


@backup.command("recover-config")
@plan_option
@settings_options
@guarded
def recover_config(
    plan: str | None, config_file: Path | None, data_dir: Path | None, log_level: str | None, log_format: str | None
) -> None:
    """Write the repository config back from the newest signed snapshot index entry.

    For when `backup run` says the config is missing or does not authenticate (deleted or replaced by
    someone without the backup key). Needs the backup key; changes nothing else."""
    from sentinel.backup.repository import Repository

    context = context_from(config_file, data_dir, log_level, log_format)
    name = pick_plan(context, plan)
    repo = Repository.recover_config(context.target(name), context.key())
    out.print(f"recovered the config of repository {repo.id} in {repo.target.describe()}")


@backup.command("forget")
@click.argument("snapshot")
@click.option("--lost", is_flag=True, help="Required: the snapshot is missing or damaged and cannot be brought back.")
@click.option("--reason", required=True, help="Why it is lost (kept, signed, in the snapshot index for auditors).")
@plan_option
@settings_options
@guarded
def forget(
    snapshot: str,
    lost: bool,
    reason: str,
    plan: str | None,
    config_file: Path | None,
    data_dir: Path | None,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Acknowledge that a missing or damaged SNAPSHOT (an id or unique prefix) is permanently lost.

    Appends a signed entry to the snapshot index (needs the backup key); from then on list, verify and
    drills report the snapshot as acknowledged rather than failing, and prune deletes chunks again.
    Intact snapshots are refused: retention and `backup prune` forget those."""
    import getpass

    if not lost:
        fail("say --lost: forget only acknowledges a missing or damaged snapshot as permanently lost", 2)
    context = context_from(config_file, data_dir, log_level, log_format)
    repo = context.repository(pick_plan(context, plan))
    try:
        by = getpass.getuser()
    except (KeyError, OSError):
        by = ""
    snapshot_id = repo.acknowledge_lost(snapshot, reason, by=by)
    out.print(f"snapshot {snapshot_id} is recorded as lost in the signed snapshot index of {repo.target.describe()}")


@backup.command("prune")
@click.argument("plan", required=False)
@click.option("--dry-run", is_flag=True, help="Say what would be deleted; delete nothing.")
@settings_options
@guarded
def prune(
    plan: str | None,
    dry_run: bool,
    config_file: Path | None,
    data_dir: Path | None,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Forget snapshots the retention policy does not keep and delete chunks no snapshot needs."""
    from sentinel.backup.jobs import run_prune

    context = context_from(config_file, data_dir, log_level, log_format)
    with progress_bars() as progress:
        reports = run_prune(context, plan, dry_run=dry_run, progress=progress)
    for target, report in reports.items():
        verb = "would forget" if dry_run else "forgot"
        out.print(
            f"target {target}: kept {len(report.kept)} snapshots, {verb} {len(report.forgotten)}; "
            f"{'would delete' if dry_run else 'deleted'} {report.chunks_deleted} chunks "
            f"({human(report.bytes_deleted)}); "
            f"{report.chunks_in_use} chunks in use",
            highlight=False,
        )
        for key, until in report.locked:
            stamp = until.isoformat() if until else "an unknown date"
            err.print(f"[yellow]locked:[/] {key} is under Object Lock until {stamp}; kept", highlight=False)
        for error in report.errors:
            err.print(f"[red]error:[/] {error}", highlight=False)
    if any(r.errors for r in reports.values()):
        sys.exit(1)

"""`sentinel audit`: search, show (and decrypt, with a recorded reason) and verify the audit trail;
list the records the store refused as forks."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import click
import orjson
from prometheus_client import CollectorRegistry
from rich.console import Console
from rich.table import Table

from sentinel.audit.kek import KeyUnavailable
from sentinel.audit.record import RecordCorrupt
from sentinel.audit.store import SearchQuery, StoreUnavailable
from sentinel.cli import load, settings_options
from sentinel.cli.keys import actor, fail, pins_from
from sentinel.config import ConfigError, Settings
from sentinel.periods import iso, parse_time
from sentinel.proxy.hooks import JournalUnavailable

if TYPE_CHECKING:
    from sentinel.audit.pins import TrustedKeys
    from sentinel.audit.watch import Check

console = Console()


@contextlib.contextmanager
def records_bar(total: int, what: str) -> Iterator[Callable[[int], None]]:
    """A progress bar with records/s and time left on a terminal (stderr); nothing when not a TTY."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    err = Console(stderr=True)
    bar = Progress(
        TextColumn(what),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )
    task = bar.add_task(what, total=total or None, rate="")

    def advance(count: int) -> None:
        bar.advance(task, count)
        speed = bar.tasks[0].speed
        bar.update(task, rate=f"{speed:,.0f} records/s" if speed else "")

    with bar:
        yield advance


def _when(value: str | None, name: str) -> float | None:
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=name) from None


def _service(settings: Settings) -> Any:
    from sentinel.audit.service import AuditService
    from sentinel.server import instance_id

    return AuditService(settings, CollectorRegistry(), instance_id(settings), cli=True)


@click.group()
def audit() -> None:
    """Read and check the audit trail (the embedded store, or Elasticsearch when configured)."""


@audit.command("verify")
@click.option("--from", "since", metavar="TIME", help="Start: ISO 8601, Unix seconds, or 7d (ago).")
@click.option("--to", "until", metavar="TIME", help="End, same forms.")
@click.option("--instance", help="Only this instance's chain.")
@click.option(
    "--public-key",
    "public_key_files",
    multiple=True,
    type=click.Path(exists=True, path_type=Path),
    help="Trust only these checkpoint keys (`sentinel keys show --public` output) [audit.pinned_keys].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
@click.option(
    "--processes", type=click.IntRange(1, 64), help="Worker processes reading and hashing [audit.verify_processes]."
)
@click.option(
    "--scheduled",
    type=click.Choice(["incremental", "full"]),
    help="Run one continuous-verification check as the schedule does, and record its outcome for /metrics.",
)
@settings_options
def verify(
    since: str | None,
    until: str | None,
    instance: str | None,
    public_key_files: tuple[Path, ...],
    as_json: bool,
    processes: int | None,
    scheduled: str | None,
    config_file: Path | None,
    data_dir: Path | None,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Recompute every hash chain against its signed checkpoints.

    With pinned keys (--public-key, else audit.pinned_keys) only they are trusted, and a signing key in
    the store that they do not pin is a finding; without, the keys stored beside the records are.

    Exit status: 0 the trail is intact, 1 something was modified, deleted, inserted, reordered or
    truncated, or a stored key is not pinned (each listed), 2 the check could not run (a bad pin file
    included), 3 (--scheduled) another check is running.
    """
    settings = load(config_file, data_dir=data_dir, log_level=log_level or "warning", log_format=log_format)
    if scheduled is not None:
        if since or until or instance or public_key_files or as_json:
            raise click.UsageError("--scheduled takes no --from, --to, --instance, --public-key or --json")
        sys.exit(_scheduled_check(settings, cast("Check", scheduled), processes))
    pins = pins_from(public_key_files, settings)

    async def run() -> tuple[Any, TrustedKeys]:
        from sentinel.audit.pins import trusted_keys
        from sentinel.audit.service import local_writers, open_store
        from sentinel.audit.verify import verify as verify_chain

        store = open_store(settings, read_only=True)
        await store.open()
        try:
            keys = await trusted_keys(store, pins)
            start, end = _when(since, "--from"), _when(until, "--to")
            total = 0
            for name in [instance] if instance else await store.instances():
                bounds = await store.seq_range(name, start, end)
                total += bounds[1] - bounds[0] + 1 if bounds else 0
            with records_bar(total, "verifying") as advance:
                report = await verify_chain(
                    store,
                    keys,
                    since=start,
                    until=end,
                    instance=instance,
                    page=settings.audit.verify_page,
                    processes=processes or settings.audit.processes(),
                    progress=advance,
                    writers=local_writers(settings),
                )
            return report, keys
        finally:
            await store.close()

    try:
        report, keys = asyncio.run(run())
    except StoreUnavailable as exc:
        fail(str(exc), 2)
        return
    ok = report.ok and not keys.findings
    if as_json:
        data = report.to_dict() | {"ok": ok, "keys": keys.to_dict()}
        sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        for chain in report.instances:
            span = f"{chain.first_seq}..{chain.last_seq}" if chain.first_seq is not None else "empty"
            console.print(
                f"[bold]{chain.instance}[/]: {chain.records_checked} records ({span}), "
                f"{chain.checkpoints_checked} checkpoints, {chain.unsealed} after the last checkpoint"
            )
            for finding in chain.findings:
                where = f"{finding.seq}" + (f"..{finding.seq_to}" if finding.seq_to else "")
                console.print(
                    f"  [red]{finding.kind.upper()}[/] seq {where}: {finding.detail}"
                    + (f" ({finding.doc_id})" if finding.doc_id else "")
                )
        for key in keys.findings:
            console.print(f"  [red]{key.kind.upper()}[/] {key.kid}: {key.detail}", highlight=False)
        trust = keys.statement() if keys.pinned else f"[yellow]{keys.statement()}[/]"
        console.print(f"Checkpoint signatures {trust}", highlight=False)
        problems = len(report.findings) + len(keys.findings)
        verdict = "[green]intact[/]" if ok else f"[red]{problems} problem(s)[/]"
        console.print(f"Audit trail: {verdict} ({report.records_checked} records checked)")
    sys.exit(0 if ok else 1)


def _scheduled_check(settings: Settings, check: Check, processes: int | None) -> int:
    """One check of continuous verification (sentinel/audit/watch.py); returns the exit status."""
    from sentinel.audit.service import local_writers, open_store
    from sentinel.audit.watch import SKIPPED_EXIT, CheckRunning, ContinuousVerification, StateFile

    async def run() -> Any:
        store = open_store(settings, read_only=True)
        watch = ContinuousVerification(
            store,
            StateFile(settings.resolve_path(settings.audit.verify_state_file)),
            page=settings.audit.verify_page,
            processes=processes or settings.audit.processes(),
            writers=local_writers(settings),
            pins=pins_from((), settings),
        )
        try:
            await store.open()
        except StoreUnavailable as exc:
            return watch.could_not_run(check, exc)
        try:
            return await watch.run(check)
        finally:
            await store.close()

    try:
        outcome = asyncio.run(run())
    except CheckRunning as exc:
        click.echo(f"sentinel: skipped: {exc}", err=True)
        return SKIPPED_EXIT
    except ConfigError as exc:  # e.g. audit.store elasticsearch without a URL
        click.echo(f"sentinel: {exc}", err=True)
        return 2
    if outcome.outcome == "error":
        click.echo(f"sentinel: the {check} check could not run: {outcome.error}", err=True)
        return 2
    verdict = "[green]intact[/]"
    if outcome.findings:
        verdict = f"[red]{sum(outcome.findings.values())} problem(s)[/]: " + "; ".join(outcome.examples)
    console.print(f"Audit trail ({check} check): {outcome.records} records verified; {verdict}")
    return 0 if outcome.outcome == "ok" else 1


@audit.command("search")
@click.option("--from", "since", metavar="TIME")
@click.option("--to", "until", metavar="TIME")
@click.option("--model")
@click.option("--operation")
@click.option("--outcome", type=click.Choice(["ok", "error", "aborted", "rejected"]))
@click.option("--status", type=int)
@click.option("--user", help="A Dify end-user id (matched through its blind index; needs the KEK).")
@click.option("--api-key-id")
@click.option("--kind", type=click.Choice(["interaction", "interaction_started", "event"]))
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@settings_options
def search(
    since: str | None,
    until: str | None,
    model: str | None,
    operation: str | None,
    outcome: str | None,
    status: int | None,
    user: str | None,
    api_key_id: str | None,
    kind: str | None,
    limit: int,
    as_json: bool,
    config_file: Path | None,
    data_dir: Path | None,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """List audit records' metadata (no content), newest first."""
    settings = load(config_file, data_dir=data_dir, log_level=log_level or "warning", log_format=log_format)

    async def run() -> list[dict[str, Any]]:
        service = _service(settings)
        await service.start()
        try:
            query = SearchQuery(
                since=_when(since, "--from"),
                until=_when(until, "--to"),
                model=model,
                operation=operation,
                outcome=outcome,
                status=status,
                api_key_id=api_key_id,
                kind=kind,
                limit=limit,
            )
            records: list[dict[str, Any]] = await service.search(query, user=user)
            return records
        finally:
            await service.stop()

    try:
        records = asyncio.run(run())
    except (StoreUnavailable, KeyUnavailable) as exc:
        fail(str(exc), 2)
        return
    if as_json:
        sys.stdout.write(orjson.dumps(records, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    table = Table(title=f"{len(records)} audit record(s)")
    for column in ("id", "time", "kind", "model", "operation", "status", "outcome", "caller", "tokens in/out"):
        table.add_column(column)
    for doc in records:
        i = doc.get("interaction") or {}
        usage = i.get("usage") or {}
        event = doc.get("event") or {}
        table.add_row(
            doc["doc_id"],
            doc.get("@timestamp", ""),
            doc["kind"] if not event else f"event:{event.get('type')}",
            i.get("model_requested") or "-",
            i.get("operation") or "-",
            str(i.get("status_code") or "-"),
            i.get("outcome") or "-",
            (i.get("caller") or {}).get("api_key_id") or event.get("actor") or "-",
            f"{usage.get('input_tokens')}/{usage.get('output_tokens')}" if usage.get("source") else "-",
        )
    console.print(table)


@audit.command("show")
@click.argument("record_id")
@click.option("--decrypt", is_flag=True, help="Also decrypt the content. Requires --reason; the access is recorded.")
@click.option("--reason", help="Why you need the content (kept, encrypted, in the audit trail).")
@settings_options
def show(
    record_id: str,
    decrypt: bool,
    reason: str | None,
    config_file: Path | None,
    data_dir: Path | None,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Show one record (by doc id `instance:seq` or interaction id) as JSON."""
    settings = load(config_file, data_dir=data_dir, log_level=log_level or "warning", log_format=log_format)
    if decrypt and not (reason and reason.strip()):
        fail("--decrypt needs --reason: decrypting audit content is itself recorded, with its reason", 2)

    async def run() -> dict[str, Any]:
        service = _service(settings)
        await service.start()
        try:
            return dict(await service.show(record_id, decrypt_content=decrypt, actor=actor(), reason=reason))
        finally:
            await service.stop()

    try:
        doc = asyncio.run(run())
    except LookupError as exc:
        fail(str(exc), 1)
        return
    except JournalUnavailable as exc:
        fail(f"the access could not be recorded, so nothing is decrypted: {exc}", 2)
        return
    except (KeyUnavailable, RecordCorrupt, StoreUnavailable) as exc:
        fail(str(exc), 2)
        return
    if decrypt:
        click.echo(f"(access recorded at {iso(__import__('time').time())} with your reason)", err=True)
    sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")


@audit.command("forks")
@click.option("--json", "as_json", is_flag=True, help="Print the forked records, hashes whole, as JSON.")
@settings_options
def forks(
    as_json: bool,
    config_file: Path | None,
    data_dir: Path | None,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """List the records the store refused as forks (another writer uses this instance id).

    The store holds a different record under each one's doc id. Ours are kept in this data
    directory's spools (the server's and the CLI's) until resolved; see docs/audit.md, "Several
    instances".

    Exit status: 0 none, 1 some (each listed), 2 a spool could not be read.
    """
    from sentinel.audit.spool import SpoolUnavailable, read_forks

    settings = load(config_file, data_dir=data_dir, log_level=log_level or "warning", log_format=log_format)
    spool = settings.resolve_path(settings.audit.spool_path)
    try:
        found = [record for path in (spool, spool.with_name("cli-" + spool.name)) for record in read_forks(path)]
    except SpoolUnavailable as exc:
        fail(str(exc), 2)
        return
    if as_json:
        sys.stdout.write(orjson.dumps([r._asdict() for r in found], option=orjson.OPT_INDENT_2).decode() + "\n")
    elif found:
        click.echo(f"{len(found)} forked audit record(s): the store holds others under these ids; ours are kept here.")
        for r in found:
            # One line each, never cut to the terminal's width; hash prefixes tell the two apart
            # (--json has them whole).
            click.echo(
                f"{r.doc_id}  seq {r.seq}  recorded {iso(r.recorded_at)}  ours {r.ours[:16]}  "
                f"store's {r.theirs[:16]}  detected {iso(r.detected_at)}"
            )
    else:
        click.echo("No forked audit records.")
    sys.exit(1 if found else 0)

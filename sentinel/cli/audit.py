"""`sentinel audit`: search, show (and decrypt, with a recorded reason) and verify the audit trail;
list the records the store refused as forks."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

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
    from sentinel.audit.anchor.check import AnchorReading
    from sentinel.audit.pins import TrustedKeys
    from sentinel.audit.settings import ObjectLockAnchorSettings
    from sentinel.audit.watch import Check

console = Console()
CONFIGURED_ANCHOR = "audit.anchor"
"""What `--anchors` given alone stands for: the bucket the settings configure."""


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
@click.option(
    "--anchors",
    "anchors",
    is_flag=False,
    flag_value=CONFIGURED_ANCHOR,
    default=None,
    metavar="[s3://BUCKET/PREFIX]",
    help="Also verify against the checkpoints anchored in S3: alone, the bucket audit.anchor configures; with "
    "s3://BUCKET/PREFIX, that bucket, read with your own credentials (AWS_* environment, profile or role).",
)
@click.option(
    "--anchor-endpoint",
    metavar="URL",
    help="The S3 endpoint of --anchors s3://... when it is not AWS (e.g. http://minio:9000).",
)
@click.option(
    "--every-anchor",
    is_flag=True,
    help="With --anchors, read every anchored note and token and check each signature and time-stamp (one "
    "GET each), not only each chain's newest and those written over.",
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
    anchors: str | None,
    anchor_endpoint: str | None,
    every_anchor: bool,
    config_file: Path | None,
    data_dir: Path | None,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Recompute every hash chain against its signed checkpoints.

    With pinned keys (--public-key, else audit.pinned_keys) only they are trusted, and a signing key in
    the store that they do not pin is a finding; without, the keys stored beside the records are.

    With --anchors, every chain is verified in full against the checkpoints anchored in the S3 Object
    Lock bucket: every anchored root (named by its key) is compared with the records' Merkle tree, each
    chain's newest note is opened with the same trusted keys and its RFC 3161 token checked against
    audit.timestamp's certificates (--every-anchor: every note and token). A trail rewritten or cut
    after it was anchored shows even when it was re-signed with the real key (docs/anchors.md).

    Exit status: 0 the trail is intact, 1 something was modified, deleted, inserted, reordered or
    truncated, or a stored key is not pinned, or the anchors disagree (each listed), 2 the check could
    not run (a bad pin file, an anchor bucket that cannot be read), 3 (--scheduled) another check is
    running.
    """
    settings = load(config_file, data_dir=data_dir, log_level=log_level or "warning", log_format=log_format)
    if scheduled is not None:
        if since or until or instance or public_key_files or as_json or anchors:
            raise click.UsageError("--scheduled takes no --from, --to, --instance, --public-key, --json or --anchors")
        sys.exit(_scheduled_check(settings, cast("Check", scheduled), processes))
    if anchors is not None and (since or until):
        raise click.UsageError("--anchors verifies every chain from its first record: it takes no --from or --to")
    if anchor_endpoint is not None and (anchors is None or anchors == CONFIGURED_ANCHOR):
        raise click.UsageError("--anchor-endpoint goes with --anchors s3://BUCKET/PREFIX")
    if every_anchor and anchors is None:
        raise click.UsageError("--every-anchor goes with --anchors")
    pins = pins_from(public_key_files, settings)
    anchor_settings, stamps = None, None
    if anchors is not None:
        from sentinel.audit.anchor.check import timestamp_trust

        anchor_settings = _anchor_settings(settings, anchors, anchor_endpoint)
        try:
            stamps = timestamp_trust(settings)
        except ValueError as exc:
            fail(f"cannot verify against the anchors: {exc}", 2)

    async def run() -> tuple[Any, TrustedKeys, AnchorReading | None]:
        from sentinel.audit.anchor.check import read_anchors
        from sentinel.audit.anchor.s3 import ObjectLockAnchor
        from sentinel.audit.pins import trusted_keys
        from sentinel.audit.service import local_writers, open_store
        from sentinel.audit.verify import verify as verify_chain

        store = open_store(settings, read_only=True)
        await store.open()
        try:
            keys = await trusted_keys(store, pins)
            # The auditor's origin (the pinned note verifier keys') when there is one, not the operator's.
            origin = keys.log_origin(settings.audit.log_origin)
            writers = local_writers(settings)
            reading = None
            if anchor_settings is not None:
                anchor = ObjectLockAnchor.from_settings(anchor_settings)
                chains = {*await store.instances(), *(w.instance for w in writers)}
                try:
                    reading = await read_anchors(
                        anchor, keys.keys, origin, stamps, every=every_anchor, expected=sorted(chains)
                    )
                finally:
                    anchor.close()
                if instance is not None:
                    reading.findings = [f for f in reading.findings if f.instance == instance]
                    reading.heads = {n: h for n, h in reading.heads.items() if n == instance}
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
                    writers=writers,
                    anchored=reading.roots if reading is not None else None,
                    log_origin=origin if reading is not None or (keys.pins and keys.pins.log_origin) else None,
                    anchored_before=time.time() - settings.audit.anchor_lag_max if reading is not None else None,
                )
            return report, keys, reading
        finally:
            await store.close()

    from sentinel.audit.anchor.s3 import AnchorError

    try:
        report, keys, reading = asyncio.run(run())
    except StoreUnavailable as exc:
        fail(str(exc), 2)
        return
    except AnchorError as exc:
        fail(f"cannot verify against the anchors: {exc}", 2)
        return
    anchor_findings = reading.findings if reading is not None else []
    ok = report.ok and not keys.findings and not anchor_findings
    if as_json:
        data = report.to_dict() | {"ok": ok, "keys": keys.to_dict()}
        if reading is not None:
            data["anchors"] = reading.to_dict()
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
        if reading is not None:
            _print_anchors(reading, [chain.instance for chain in report.instances])
        problems = len(report.findings) + len(keys.findings) + len(anchor_findings)
        verdict = "[green]intact[/]" if ok else f"[red]{problems} problem(s)[/]"
        console.print(f"Audit trail: {verdict} ({report.records_checked} records checked)")
    sys.exit(0 if ok else 1)


def _anchor_settings(settings: Settings, anchors: str, endpoint: str | None) -> ObjectLockAnchorSettings:
    """The bucket `--anchors` names: audit.anchor, or an s3:// URL read with boto3's own credentials."""
    from sentinel.audit.settings import ObjectLockAnchorSettings

    if anchors == CONFIGURED_ANCHOR:
        if settings.audit.anchor is None:
            raise click.UsageError("--anchors without a URL reads audit.anchor, which is not configured")
        return settings.audit.anchor
    url = urlsplit(anchors)
    if url.scheme != "s3" or not url.netloc or url.query or url.fragment or "@" in url.netloc:
        raise click.BadParameter(f"{anchors!r} is not s3://BUCKET/PREFIX", param_hint="--anchors")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    try:
        return ObjectLockAnchorSettings(
            bucket=url.netloc, prefix=url.path.strip("/"), endpoint_url=endpoint, region=region
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--anchors") from None


def _print_anchors(reading: AnchorReading, chains: list[str]) -> None:
    for finding in reading.findings:
        console.print(
            f"  [red]{finding.kind.upper()}[/] {finding.instance} size {finding.seq}: {finding.detail}", highlight=False
        )
    heads = []
    for name in sorted({*chains, *reading.heads}):
        head = reading.heads.get(name)
        if head is None:
            heads.append(f"{name}: nothing anchored")
            continue
        stamped = f", time-stamped {iso(head.stamped_at.timestamp())}" if head.stamped_at is not None else ""
        heads.append(f"{name} up to {head.size}{stamped}")
    console.print(
        f"Anchors: {reading.statement()}; " + ("; ".join(heads) or "no chains"), highlight=False, soft_wrap=True
    )
    if reading.ignored:
        ignored = ", ".join(reading.ignored[:5]) + (
            f" and {len(reading.ignored) - 5} more" if len(reading.ignored) > 5 else ""
        )
        console.print(
            f"  [yellow]{len(reading.ignored)} origin(s) in the bucket are not under audit.log_origin[/] "
            f"({ignored}): not checked",
            highlight=False,
        )


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


def _add_proof_commands() -> None:
    # In their own module (sentinel/cli/proofs.py), which reads records_bar from this one when it runs.
    from sentinel.cli.proofs import checkpoint, consistency, prove

    for command in (checkpoint, prove, consistency):
        audit.add_command(command)


_add_proof_commands()

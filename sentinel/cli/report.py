"""`sentinel report`: a signed compliance report for a period, and `sentinel report verify FILE`."""

from __future__ import annotations

import asyncio
import getpass
import sys
from pathlib import Path
from typing import Any, cast

import click
import orjson

from sentinel.cli import load, settings_options
from sentinel.report.render import FORMATS, Format


class _RichStages:
    """Report progress as rich bars on stderr (nothing when stderr is not a terminal)."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar
        self.task: Any = None

    def begin(self, name: str, total: int | None = None) -> None:
        self.end()
        self.task = self.bar.add_task(name, total=total)

    def advance(self, amount: int) -> None:
        if self.task is not None:
            self.bar.advance(self.task, amount)

    def end(self) -> None:
        if self.task is not None:
            self.bar.remove_task(self.task)
            self.task = None


def _period(since: str, until: str) -> Any:
    from sentinel.periods import parse_time
    from sentinel.report.model import Period

    try:
        end = parse_time("0s") if until == "now" else parse_time(until)
        return Period(parse_time(since, now=end) if since[-1:] in "smhdw" else parse_time(since), end)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.group(invoke_without_command=True)
@click.option(
    "--from", "since", default="30d", show_default=True, help="Start: ISO 8601, Unix seconds, or 7d/24h before --to."
)
@click.option("--to", "until", default="now", show_default=True, help="End (exclusive): ISO 8601, Unix seconds or now.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="html", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write here (and FILE.sig.json).")
@click.option(
    "--bundle",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write an evidence bundle into this new directory: every format, signatures, pinned keys, the "
    "checkpoints relied on, and a README on checking them offline.",
)
@click.option(
    "--reasons/--no-reasons",
    default=True,
    show_default=True,
    help="Show the stated reasons of content accesses (decrypting them is recorded as an access itself).",
)
@click.option(
    "--public-key",
    "pin_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Verify the chains against the keys this pin file pins (`sentinel keys show --public`) "
    "[audit.pinned_keys]; without either, the report says it trusted the store's own keys.",
)
@settings_options
@click.pass_context
def report(
    ctx: click.Context,
    since: str,
    until: str,
    fmt: str,
    output: Path | None,
    bundle: Path | None,
    reasons: bool,
    pin_file: Path | None,
    config_file: Path | None,
    data_dir: Path | None,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """A compliance report for auditors (HIPAA 164.312 style), signed and recorded in the audit trail.

    \b
      sentinel report --from 2026-10-01 --to 2026-11-01 --format pdf -o october.pdf
      sentinel report verify october.pdf
      sentinel report --from 2026-10-01 --to 2026-11-01 --bundle october/

    Exit status 1 if the report was not issued, 2 for wrong input (a bad pin file included).
    """
    if ctx.invoked_subcommand is not None:
        return
    period = _period(since, until)
    if bundle is not None and output is not None:
        raise click.UsageError("--bundle writes every format into its directory: leave out --output")
    if bundle is not None and bundle.exists() and any(bundle.iterdir()):
        raise click.UsageError(f"--bundle {bundle}: the directory is not empty")
    if output is None and bundle is None and fmt == "pdf" and sys.stdout.isatty():
        raise click.UsageError("a PDF does not belong on a terminal: pass --output FILE")
    settings = load(config_file, data_dir=data_dir, log_level=log_level, log_format=log_format)
    from prometheus_client import CollectorRegistry
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from sentinel.audit.service import AuditService
    from sentinel.cli.keys import pins_from
    from sentinel.proxy.hooks import JournalUnavailable
    from sentinel.report.issue import issue_reports
    from sentinel.server import instance_id

    pins = pins_from((pin_file,) if pin_file is not None else (), settings)

    err = Console(stderr=True)
    service = AuditService(settings, CollectorRegistry(), instance_id(settings), cli=True)

    async def run() -> Any:
        await service.start()
        try:
            bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=err,
                transient=True,
                disable=not err.is_terminal,
            )
            with bar:
                gathered, files = await issue_reports(
                    service,
                    period,
                    FORMATS if bundle is not None else (cast(Format, fmt),),
                    actor=f"cli:{getpass.getuser()}",
                    include_reasons=reasons,
                    stages=_RichStages(bar),
                    pins=pins,
                )
            if bundle is not None:
                await _write_bundle(service, bundle, gathered, files, pins)
            return files[0]
        finally:
            await service.stop()

    try:
        issued = asyncio.run(run())
    except (JournalUnavailable, RuntimeError) as exc:
        err.print(f"[red]sentinel:[/] the report was not issued: {exc}", highlight=False)
        sys.exit(1)
    if bundle is not None:
        err.print(
            f"report {issued.report_id}: evidence bundle in {bundle} (README.md says how to check it offline)",
            highlight=False,
        )
    elif output is not None:
        output.write_bytes(issued.body)
        sidecar = output.with_name(output.name + ".sig.json")
        sidecar.write_bytes(issued.sidecar())
        err.print(
            f"report {issued.report_id}: {output} ({len(issued.body):,} bytes), signature {sidecar}", highlight=False
        )
    else:
        sys.stdout.buffer.write(issued.body)
        sys.stdout.buffer.flush()
    err.print(f"sha256 {issued.sha256}, signed with {issued.kid}, recorded as a report_issued event", highlight=False)
    if pins is None:
        err.print(
            "[yellow]note:[/] the checkpoint keys are not pinned: the report says it trusted the keys stored in "
            "the audit store itself; see `sentinel keys show --public` and audit.pinned_keys",
            highlight=False,
        )
    elif issued.kid not in pins.keys:
        err.print(
            f"[yellow]note:[/] {issued.kid}, which signed this report, is not in the pin file: auditors need a "
            "new one (`sentinel keys show --public`) to check it offline",
            highlight=False,
        )


async def _write_bundle(service: Any, directory: Path, report: dict[str, Any], files: list[Any], pins: Any) -> None:
    from sentinel.audit.pins import pin_file_text
    from sentinel.report.bundle import relied_on, write_bundle

    if pins is not None:
        text = "".join(f.path.read_text().rstrip("\n") + "\n" for f in pins.files)
    else:
        text = pin_file_text(await service.store.keys())
    checkpoints = {}
    for chain in report["integrity"]["instances"]:
        docs = await service.store.checkpoints(chain["instance"])
        checkpoints[chain["instance"]] = relied_on(docs, chain["first_seq"], chain["last_seq"])
    await asyncio.to_thread(
        write_bundle, directory, report, files, pins_text=text, pinned=pins is not None, checkpoints=checkpoints
    )


@report.command("verify")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--signature",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The signature file (default: FILE.sig.json when it exists).",
)
@click.option(
    "--public-key",
    "public_key_files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Check offline against these pinned keys (`sentinel keys show --public`): no audit store needed.",
)
@settings_options
def verify(
    file: Path,
    signature: Path | None,
    public_key_files: tuple[Path, ...],
    config_file: Path | None,
    data_dir: Path | None,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Check that FILE is a report Sentinel issued, unmodified: its SHA-256 is named by an intact, validly
    signed report_issued record in the audit trail. With --public-key, offline: FILE and its signature
    file alone, against the pinned keys. Exit status 1 if not, 2 if the check could not run."""
    from sentinel.audit.store import StoreUnavailable
    from sentinel.cli.keys import pins_from, public_keys_from
    from sentinel.report.signing import verify_offline

    signature = signature or (file.with_name(file.name + ".sig.json") if Path(f"{file}.sig.json").exists() else None)
    try:
        sidecar = orjson.loads(signature.read_bytes()) if signature is not None else None
    except orjson.JSONDecodeError as exc:
        raise click.UsageError(f"{signature} is not a signature file: {exc}") from None
    body = file.read_bytes()
    pinned = public_keys_from(public_key_files)
    if pinned is not None:
        if sidecar is None:
            raise click.UsageError(
                f"offline verification needs the signature file ({file.name}.sig.json or --signature)"
            )
        verdict = verify_offline(pinned.get, body, sidecar)
    else:
        settings = load(config_file, data_dir=data_dir, log_level=log_level, log_format=log_format)
        trusted = pins_from((), settings)  # audit.pinned_keys, if set, vouches for the trail's signatures
        try:
            verdict = asyncio.run(_verify_in_trail(settings, body, sidecar, trusted))
        except StoreUnavailable as exc:
            click.echo(
                f"sentinel: cannot read the audit trail ({exc}); to check offline, pass --public-key PINS", err=True
            )
            sys.exit(2)
    if verdict.ok:
        issued = verdict.issued or {}
        if pinned is not None:
            click.echo(
                f"OK: {file} is report {issued.get('report_id')} ({issued.get('format')}), unmodified; signature by "
                f"pinned key {issued.get('kid')} valid; {'; '.join(verdict.notes)}"
            )
            return
        click.echo(
            f"OK: {file} is report {issued.get('report_id')} ({issued.get('format')}, {issued.get('from')} to "
            f"{issued.get('to')}) issued {issued.get('time')} by {issued.get('actor')}; signature by "
            f"{issued.get('kid')} valid; {'; '.join(verdict.notes)}"
        )
        return
    for problem in verdict.problems:
        click.echo(f"FAILED: {problem}", err=True)
    click.echo(f"sha256 {verdict.sha256}", err=True)
    sys.exit(1)


async def _verify_in_trail(settings: Any, body: bytes, sidecar: dict[str, Any] | None, pins: Any) -> Any:
    from sentinel.audit.service import local_writers, open_store
    from sentinel.report.issue import public_keys
    from sentinel.report.signing import verify_report

    store = open_store(settings, read_only=True)
    await store.open()
    try:
        lookup = pins.keys.get if pins is not None else public_keys(await store.keys())
        return await verify_report(store, lookup, body, sidecar, writers=local_writers(settings))
    finally:
        await store.close()

"""`sentinel keys`: the audit trail's key-encryption key (KEK) and the data keys it wraps."""

from __future__ import annotations

import asyncio
import getpass
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from prometheus_client import CollectorRegistry
from rich.console import Console
from rich.table import Table

from sentinel.audit.kek import KeyUnavailable, LocalKeyFile
from sentinel.audit.keyring import KeyRing, WrappedKey
from sentinel.audit.record import Event
from sentinel.audit.spool import Spool, SpoolUnavailable
from sentinel.cli import load, settings_options
from sentinel.config import Settings

if TYPE_CHECKING:
    from sentinel.audit.pins import Pins

console = Console()


def actor() -> str:
    return f"cli:{getpass.getuser()}@{socket.gethostname()}"


def fail(message: str, code: int = 1) -> None:
    click.echo(f"sentinel: {message}", err=True)
    sys.exit(code)


def _spools(settings: Settings) -> list[Spool]:
    """The server's spool and the CLI's: each holds the keys its chain uses."""
    main = settings.resolve_path(settings.audit.spool_path)
    return [Spool(main), Spool(main.with_name("cli-" + main.name))]


def _open(spool: Spool) -> bool:
    try:
        spool.run_sync(spool.open)
        return True
    except SpoolUnavailable:
        return False


async def _record(settings: Settings, event: Event) -> None:
    """Write an event into the CLI's own chain and try to ship it now."""
    from sentinel.audit.service import AuditService
    from sentinel.server import instance_id

    service = AuditService(settings, CollectorRegistry(), instance_id(settings), cli=True)
    await service.start()
    try:
        await service.record_event(event)
    finally:
        await service.stop()


@click.group()
def keys() -> None:
    """Create, inspect and rotate the audit trail's keys.

    \b
    The key-encryption key (KEK) lives in one file (SENTINEL_KEY_FILE, default
    <data_dir>/keys/kek.key, mode 0600). It wraps the data keys that encrypt audit
    content. Keep a copy somewhere safe and separate: not with the data, not in
    Elasticsearch, not in Sentinel's backups.
    """


@keys.command("init")
@settings_options
def init(config_file: Path | None, data_dir: Path | None, log_level: str | None, log_format: str | None) -> None:
    """Create a new key-encryption key file (refuses to overwrite one)."""
    settings = load(config_file, data_dir=data_dir, log_level=log_level, log_format=log_format)
    path = settings.resolve_path(settings.key_file)
    try:
        keks = LocalKeyFile.create(path)
    except KeyUnavailable as exc:
        fail(str(exc))
        return
    console.print(f"Created key-encryption key [bold]{keks.active_id}[/] in {path} (mode 0600).")
    console.print("Back it up somewhere safe and separate: without it the audit trail cannot be read.")


@keys.command("show")
@click.option(
    "--public",
    is_flag=True,
    help="Print only the checkpoint signing public keys: a pin file for auditors (audit.pinned_keys, --public-key).",
)
@settings_options
def show(
    public: bool, config_file: Path | None, data_dir: Path | None, log_level: str | None, log_format: str | None
) -> None:
    """List key-encryption keys and the wrapped keys in the spools (never key material).

    With --public, the output is a pin file: one `KID BASE64` line per checkpoint signing key (raw
    Ed25519 public key), `#` comments. Reports, restore drills and `audit verify` trust only the keys
    it pins (audit.pinned_keys, or --public-key); publish it again whenever a new signing key appears.
    Its `# note-verifier: name+hash+base64key` comment lines give each key as the C2SP verifier key of
    each chain this data directory writes: what transparency-log clients check `sentinel audit
    checkpoint`, `prove` and `consistency` output with."""
    settings = load(config_file, data_dir=data_dir, log_level=log_level, log_format=log_format)
    if public:
        _print_pins(settings)
        return
    path = settings.resolve_path(settings.key_file)
    try:
        keks = LocalKeyFile.load(path)
    except KeyUnavailable as exc:
        fail(str(exc))
        return
    console.print(
        f"Key-encryption keys in {path}: "
        + ", ".join(f"[bold]{k}[/] (active)" if k == keks.active_id else k for k in keks.key_ids)
    )
    table = Table(title="Keys wrapped by them")
    for column in ("key id", "purpose", "wrapped by", "created", "age (days)"):
        table.add_column(column)
    seen: dict[str, Any] = {}
    for spool in _spools(settings):
        if spool.path.exists() and _open(spool):
            for key in spool.run_sync(spool.stored_keys):
                entry = seen.setdefault(key.kid, {"key": key, "keks": set()})
                entry["keks"].add(key.kek_id)
            spool.close()
    for entry in sorted(seen.values(), key=lambda e: e["key"].created):
        key = entry["key"]
        table.add_row(
            key.kid,
            key.purpose,
            ", ".join(sorted(entry["keks"])),
            time.strftime("%Y-%m-%d %H:%M", time.gmtime(key.created)),
            f"{(time.time() - key.created) / 86400:.1f}",
        )
    console.print(table)


def _print_pins(settings: Settings) -> None:
    """From the spools, the keys this deployment made itself: not the store, which others may write; and
    their verifier keys for the chains this data directory writes (the serving instance's and the CLI's),
    whose checkpoints those keys sign."""
    from sentinel.audit.note import origin_of
    from sentinel.audit.pins import pin_file_text
    from sentinel.audit.service import local_writers

    keys: list[WrappedKey] = []
    for spool in _spools(settings):
        if spool.path.exists() and _open(spool):
            keys += spool.run_sync(spool.stored_keys)
            spool.close()
    origins = [origin_of(settings.audit.log_origin, writer.instance) for writer in local_writers(settings)]
    click.echo(pin_file_text(keys, origins), nl=False)


@keys.command("rotate")
@settings_options
def rotate(config_file: Path | None, data_dir: Path | None, log_level: str | None, log_format: str | None) -> None:
    """Start a new data key now. Old records keep theirs and stay readable; a running Sentinel
    switches within seconds."""
    settings = load(config_file, data_dir=data_dir, log_level=log_level, log_format=log_format)
    spool = _spools(settings)[0]
    try:
        keks = LocalKeyFile.load(settings.resolve_path(settings.key_file))
        spool.run_sync(spool.open)
        keyring = KeyRing(keks, spool)
        data_keys = [k for k in keyring.all_keys() if k.purpose == "data"]
        old = data_keys[-1].kid if data_keys else None
        kid = keyring.rotate()
    except (KeyUnavailable, SpoolUnavailable) as exc:
        fail(str(exc))
        return
    finally:
        spool.close()
    asyncio.run(_record(settings, Event("key_rotation", actor(), {"new_data_key": kid, "previous": old})))
    console.print(f"New data key [bold]{kid}[/]" + (f" (previous: {old})." if old else "."))


@keys.command("rewrap")
@settings_options
def rewrap(config_file: Path | None, data_dir: Path | None, log_level: str | None, log_format: str | None) -> None:
    """Create a new key-encryption key and wrap every data key under it too (records are not touched).

    The old KEK stays in the file until `sentinel keys retire OLD_ID`, which refuses while any
    key would become unreadable.
    """
    settings = load(config_file, data_dir=data_dir, log_level=log_level, log_format=log_format)
    path = settings.resolve_path(settings.key_file)
    try:
        keks = LocalKeyFile.load(path)
        old = keks.active_id
        rings = []
        for spool in _spools(settings):
            if spool.path.exists():
                spool.run_sync(spool.open)
                rings.append((spool, KeyRing(keks, spool)))
        new_id = keks.add_new()
        count = 0
        for spool, ring in rings:
            count += len(ring.rewrap(keks.active()))
            spool.close()
    except (KeyUnavailable, SpoolUnavailable) as exc:
        fail(str(exc))
        return
    asyncio.run(
        _record(
            settings, Event("kek_rewrap", actor(), {"new_kek": new_id, "previous_kek": old, "keys_rewrapped": count})
        )
    )
    console.print(
        f"New key-encryption key [bold]{new_id}[/]; {count} key wrapping(s) added. "
        f"Old KEK {old} kept until `sentinel keys retire {old}`."
    )


@keys.command("retire")
@click.argument("kek_id")
@settings_options
def retire(
    kek_id: str, config_file: Path | None, data_dir: Path | None, log_level: str | None, log_format: str | None
) -> None:
    """Remove an old key-encryption key from the key file once nothing needs it."""
    settings = load(config_file, data_dir=data_dir, log_level=log_level, log_format=log_format)
    try:
        keks = LocalKeyFile.load(settings.resolve_path(settings.key_file))
        stranded: list[str] = []
        for spool in _spools(settings):
            if spool.path.exists():
                spool.run_sync(spool.open)
                stranded += KeyRing(keks, spool).unwrappable_without(kek_id)
                spool.close()
        if stranded:
            fail(
                f"cannot retire {kek_id}: {len(stranded)} key(s) (e.g. {stranded[0]}) are wrapped only by it; "
                "run `sentinel keys rewrap` first"
            )
        keks.retire(kek_id)
    except KeyUnavailable as exc:
        fail(str(exc))
        return
    asyncio.run(_record(settings, Event("kek_retired", actor(), {"kek": kek_id})))
    console.print(f"Retired key-encryption key {kek_id}.")


def public_keys_from(files: tuple[Path, ...]) -> dict[str, Any] | None:
    """Pinned checkpoint public keys by key id, from pin files (`keys show --public`); None without files.
    A file that is not a pin file is a usage error (exit status 2) naming the file and line."""
    pins = pins_from(files)
    return dict(pins.keys) if pins is not None else None


def pins_from(files: tuple[Path, ...], settings: Settings | None = None) -> Pins | None:
    """The pins a command trusts: its `--public-key` files, else the pin file `audit.pinned_keys` names
    (with `settings`), else None (the store's own keys). A bad pin file exits with status 2, never a
    traceback: a usage error for a flag, a named setting for the setting."""
    from sentinel.audit.pins import PinFileError, Pins, configured_pins

    try:
        if files:
            return Pins.read(files)
        return configured_pins(settings) if settings is not None else None
    except PinFileError as exc:
        if files:
            raise click.UsageError(str(exc)) from None
        fail(str(exc), 2)
        return None

"""`sentinel audit checkpoint`, `prove` and `consistency`: a chain's signed tree head, and Merkle proofs
against it that any transparency-log client checks (sentinel/audit/proofs.py)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
import orjson

from sentinel.audit.proofs import (
    ChainProofs,
    ConsistencyProof,
    InclusionProof,
    Progress,
    ProofError,
    ProofMismatch,
    SignedTree,
    b64,
    locate,
)
from sentinel.audit.store import StoreUnavailable
from sentinel.cli import load, settings_options
from sentinel.cli.keys import fail, pins_from
from sentinel.config import ConfigError, Settings

if TYPE_CHECKING:
    from sentinel.audit.pins import TrustedKeys
    from sentinel.audit.store import AuditStore

T = TypeVar("T")

CHAIN_HELP = "The chain (instance id); default: this data directory's instance."


def _own_instance(settings: Settings) -> str | None:
    """This data directory's instance id, without creating one (unlike `sentinel serve`)."""
    marker = settings.data_dir / "instance-id"
    return settings.instance_id or (marker.read_text().strip() if marker.exists() else None) or None


def _chain_name(settings: Settings, chain: str | None) -> str:
    name = chain or _own_instance(settings)
    if not name:
        fail(f"no instance id in {settings.data_dir}: name the chain with --chain", 2)
    assert name is not None
    return name


@contextlib.contextmanager
def _rebuilding(instance: str, size: int) -> Iterator[Progress]:
    from sentinel.cli.audit import records_bar

    click.echo(
        f"sentinel: the writer's tiles of chain {instance} are not in this data directory (or stop short of "
        f"size {size}): rebuilding its Merkle tree from the store's {size:,} records",
        err=True,
    )
    with records_bar(size, "hashing") as advance:
        yield advance


def _run(settings: Settings, work: Callable[[AuditStore, TrustedKeys], Awaitable[T]]) -> T:
    """Run `work` on the store, read-only, with the checkpoint keys trusted (audit.pinned_keys, else the
    store's own). Exits 1 when the store does not match what a checkpoint signed, 2 when no proof can be made."""
    from sentinel.audit.pins import trusted_keys
    from sentinel.audit.service import open_store

    pins = pins_from((), settings)

    async def run() -> T:
        store = open_store(settings, read_only=True)
        await store.open()
        try:
            return await work(store, await trusted_keys(store, pins))
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except ProofMismatch as exc:
        fail(str(exc), 1)
    except (ProofError, StoreUnavailable, ConfigError) as exc:
        fail(str(exc), 2)
    raise AssertionError("unreachable: fail() exits")


def _chain(settings: Settings, store: AuditStore, keys: TrustedKeys, instance: str) -> ChainProofs:
    from sentinel.audit.note import origin_of
    from sentinel.audit.service import local_writers

    spools = {writer.instance: writer.path for writer in local_writers(settings)}
    return ChainProofs(
        store,
        instance,
        keys,
        spool=spools.get(instance),
        origin=origin_of(settings.audit.log_origin, instance),
        rebuilding=_rebuilding,
    )


def _dump(doc: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")


@click.command("checkpoint")
@click.option("--chain", metavar="INSTANCE", help=CHAIN_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print {origin, size, root (base64), note} as JSON.")
@settings_options
def checkpoint(
    chain: str | None,
    as_json: bool,
    config_file: Path | None,
    data_dir: Path | None,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Print the chain's newest signed checkpoint (a C2SP signed note), exactly as stored.

    Its signature is checked first, with the key the checkpoint names (pinned by audit.pinned_keys, else
    stored). Verify it with the chain's verifier key (`sentinel keys show --public`).

    Exit status: 0 printed, 1 its signature does not verify, 2 the chain has no checkpoint with a signed
    tree head (or the store cannot be read).
    """
    settings = load(config_file, data_dir=data_dir, log_level=log_level or "warning", log_format=log_format)
    name = _chain_name(settings, chain)

    async def newest(store: AuditStore, keys: TrustedKeys) -> SignedTree:
        return await _chain(settings, store, keys, name).newest()

    tree = _run(settings, newest)
    if as_json:
        _dump(tree.to_dict())
    else:
        sys.stdout.write(tree.note)


@click.command("prove")
@click.argument("record_id")
@click.option("--json", "as_json", is_flag=True, help="Print the proof document (what transparency-log clients read).")
@settings_options
def prove(
    record_id: str,
    as_json: bool,
    config_file: Path | None,
    data_dir: Path | None,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Prove that a record (doc id `instance:seq` or interaction id) is in its chain's Merkle tree.

    The proof is of the tree at the size of the chain's newest signed checkpoint, and is checked against
    that checkpoint's root before it is printed. With --json: {origin, leaf_index, tree_size, record (the
    stored bytes, base64), leaf_hash, proof, checkpoint (the signed note)}, which Go's sumdb/tlog and any
    RFC 9162 client check with the chain's verifier key (`sentinel keys show --public`). Subtree hashes
    come from the writer's tiles in this data directory's spool, else from the chain rebuilt from the store.

    Exit status: 0 the proof holds, 1 it does not (the store's record or chain does not match the signed
    checkpoint), 2 no proof can be made (no such record, no checkpoint covers it yet).
    """
    settings = load(config_file, data_dir=data_dir, log_level=log_level or "warning", log_format=log_format)

    async def make(store: AuditStore, keys: TrustedKeys) -> tuple[InclusionProof, ChainProofs]:
        instance, seq = await locate(store, record_id)
        chain = _chain(settings, store, keys, instance)
        return await chain.prove(seq), chain

    proof, chain = _run(settings, make)
    if as_json:
        _dump(proof.to_dict())
        return
    tree = proof.tree
    source = "the writer's tiles" if chain.source == "tiles" else "the tree rebuilt from the store"
    click.echo(
        f"Record {chain.instance}:{proof.leaf_index + 1:012d} is leaf {proof.leaf_index} of {tree.origin} at "
        f"tree size {tree.size}: its inclusion proof ({len(proof.hashes)} hashes, from {source}) holds against "
        f"the signed root {b64(tree.root)}. --json prints it for an auditor."
    )


@click.command("consistency")
@click.option("--chain", metavar="INSTANCE", help=CHAIN_HELP)
@click.option("--old", "old", type=click.IntRange(min=1), required=True, help="The earlier tree size.")
@click.option("--new", "new", type=click.IntRange(min=1), help="The later tree size; default: the newest checkpoint's.")
@click.option("--json", "as_json", is_flag=True, help="Print the proof document (what transparency-log clients read).")
@settings_options
def consistency(
    chain: str | None,
    old: int,
    new: int | None,
    as_json: bool,
    config_file: Path | None,
    data_dir: Path | None,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Prove that the chain's tree at size --new extends its tree at size --old (nothing rewritten).

    With --json: {origin, old_size, new_size, old_root, new_root (base64), proof}, plus the signed
    notes old_checkpoint / new_checkpoint where a checkpoint was taken at that size (a client checking
    against signatures needs both). The roots are computed from the tiles and must match those notes.

    Exit status: 0 the proof holds, 1 a root does not match its signed checkpoint (or the store's chain
    has a gap), 2 no proof can be made (sizes out of range, no checkpoint).
    """
    settings = load(config_file, data_dir=data_dir, log_level=log_level or "warning", log_format=log_format)
    name = _chain_name(settings, chain)

    async def make(store: AuditStore, keys: TrustedKeys) -> ConsistencyProof:
        return await _chain(settings, store, keys, name).consistency(old, new)

    proof = _run(settings, make)
    if as_json:
        _dump(proof.to_dict())
        return
    signed = [str(t.size) for t in (proof.old_tree, proof.new_tree) if t is not None]
    click.echo(
        f"The tree of {proof.origin} at size {proof.new_size} (root {b64(proof.new_root)}) extends the tree at "
        f"size {proof.old_size} (root {b64(proof.old_root)}): the consistency proof ({len(proof.hashes)} hashes) "
        f"holds. Signed checkpoints at size {' and '.join(signed) if signed else '(none)'}."
    )

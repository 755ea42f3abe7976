"""Inclusion and consistency proofs of a chain's Merkle tree, made for auditors (`sentinel audit prove`,
`sentinel audit consistency`; the admin API or a tiles publisher can hand out the same documents).

A proof rests on a checkpoint in the store whose C2SP signed note names the tree's root. Subtree hashes
come from the writer's tiles in its spool, read-only beside the running writer, or, for a chain whose
tiles are not here (another instance's, or a spool from before Merkle trees), from the tree rebuilt by
hashing the store's records. Every proof is checked against the signed root before it is handed out.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import sqlite3
from collections.abc import Callable, Collection, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sentinel.audit.note import Checkpoint, NoteError, Verifier, open_checkpoint
from sentinel.audit.spool import SpoolUnavailable
from sentinel.audit.store import AuditStore
from sentinel.audit.tiles import HEIGHT, WIDTH, TileReader, TreeBuilder
from sentinel.audit.tlog import (
    SubtreeHashes,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    range_hash,
    verify_consistency,
    verify_inclusion,
)

PublicKeys = Callable[[str], Ed25519PublicKey | None]
"""A checkpoint signing key by its id (`TrustedKeys`), None when it is not trusted."""
Progress = Callable[[int], None]
"""Called with the number of records just hashed."""
Rebuilding = Callable[[str, int], AbstractContextManager[Progress]]
"""`(instance, size)` -> a context around rebuilding that chain's tree of `size` leaves from the store,
yielding a progress callback (the CLI shows a bar and says why)."""
Tiles = dict[tuple[int, int], bytes]


class ProofError(Exception):
    """No proof can be made: no such record, no signed checkpoint covers it, a size out of range."""


class ProofMismatch(Exception):
    """What the store holds does not match what a checkpoint signed: a proof that does not hold against
    the signed root, a signed note that does not verify, or a chain with a gap or a duplicate."""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class SpoolTiles:
    """A writer's tiles read from its spool file, read-only: a `tiles.TileGetter`.

    The writer rewrites each level's rightmost tile as its tree grows, and the longer tile begins with the
    shorter one's hashes, so tiles read at any size serve every tree up to it (`size()`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    def _query(self, sql: str, params: tuple[int, ...] = ()) -> Any:
        try:
            if self._db is None:
                if not self.path.exists():
                    raise SpoolUnavailable(f"audit spool {self.path} does not exist")
                self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            return self._db.execute(sql, params).fetchone()
        except sqlite3.Error as exc:  # a spool from before Merkle trees has no tiles table
            raise SpoolUnavailable(f"cannot read the tiles in audit spool {self.path}: {exc}") from exc

    def __call__(self, level: int, index: int) -> bytes | None:
        row = self._query("SELECT hashes FROM tiles WHERE level = ? AND idx = ?", (level, index))
        return bytes(row[0]) if row else None

    def newest_note(self) -> str | None:
        """The C2SP signed note of the newest checkpoint the writer signed (None: none yet). The spool keeps
        its newest checkpoint whatever it prunes, and writes it in the transaction that writes its tiles."""
        row = self._query(
            "SELECT json_extract(body, '$.note') FROM checkpoints "
            "WHERE json_extract(body, '$.note') IS NOT NULL ORDER BY seq DESC LIMIT 1"
        )
        return str(row[0]) if row else None

    def size(self) -> int:
        """The leaves the tiles hold (0 when none)."""
        row = self._query("SELECT idx, length(hashes) FROM tiles WHERE level = 0 ORDER BY idx DESC LIMIT 1")
        return int(row[0]) * WIDTH + int(row[1]) // 32 if row else 0

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> SpoolTiles:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


def tiles_read(compute: Callable[[SubtreeHashes], object]) -> set[tuple[int, int]]:
    """The tiles `compute` would read through a `TileReader`, found by running it over blank hashes
    (the mapping is `TileReader`'s: a subtree of height 8L + h lies in one tile of level L)."""
    read: set[tuple[int, int]] = set()

    def blank(level: int, index: int) -> bytes:
        tile_level, height = divmod(level, HEIGHT)
        read.add((tile_level, (index << height) // WIDTH))
        return bytes(32)

    compute(blank)
    return read


async def rebuild_tiles(
    store: AuditStore,
    instance: str,
    size: int,
    *,
    wanted: Collection[tuple[int, int]] | None = None,
    progress: Progress | None = None,
) -> Tiles:
    """The tiles of `instance`'s tree of `size` leaves, hashed from the store's records 1..size; only
    those in `wanted` when given (the tiles of ten million leaves take 320 MB, a proof reads a few).
    `ProofMismatch` when the store's chain has a gap or two records at one sequence number."""
    builder = TreeBuilder()
    tiles: Tiles = {}
    expected = 1
    async for page in store.chain_pages(instance, 1, size, documents=False):
        for record in page:
            if record.seq != expected:
                what = f"two records at seq {record.seq}" if record.seq < expected else f"no record at seq {expected}"
                raise ProofMismatch(f"the store holds {what} of chain {instance}: its tree cannot be rebuilt")
            builder.append(leaf_hash(record.body))
            expected += 1
        # Once a page: a partial tile is joined whenever it is taken.
        for level, index, data in builder.take_changed():
            if len(data) == WIDTH * 32 and (wanted is None or (level, index) in wanted):
                tiles[(level, index)] = data
        if progress is not None:
            progress(len(page))
    if expected <= size:
        raise ProofMismatch(f"the store holds chain {instance} only up to seq {expected - 1}, not {size}")
    for level in builder.edge:
        index = (size >> (HEIGHT * level)) // WIDTH
        if wanted is None or (level, index) in wanted:
            edge = builder.tile(level, index)
            assert edge is not None
            tiles[(level, index)] = edge
    return tiles


@dataclass(frozen=True, slots=True)
class SignedTree:
    """A chain's tree head as a checkpoint signed it: the C2SP note as stored, and what it says."""

    note: str
    checkpoint: Checkpoint

    @property
    def origin(self) -> str:
        return self.checkpoint.origin

    @property
    def size(self) -> int:
        return self.checkpoint.size

    @property
    def root(self) -> bytes:
        return self.checkpoint.root

    def to_dict(self) -> dict[str, Any]:
        return {"origin": self.origin, "size": self.size, "root": b64(self.root), "note": self.note}


def open_tree(checkpoint: dict[str, Any], public_key: PublicKeys) -> SignedTree:
    """The note a stored checkpoint carries, its signature checked with the key the checkpoint names.
    `ProofError` when that key is not trusted here; `ProofMismatch` when the note does not verify with
    it, or names another tree size than the checkpoint's sequence number."""
    name = checkpoint.get("doc_id", "?")
    key = public_key(str(checkpoint.get("kid")))
    if key is None:
        raise ProofError(f"checkpoint {name} is signed by {checkpoint.get('kid')}, a key not trusted here")
    note = str(checkpoint["note"])
    try:
        tree = open_checkpoint(note, [Verifier(note.split("\n", 1)[0], key)])
    except NoteError as exc:
        raise ProofMismatch(f"the signed note of checkpoint {name} does not verify: {exc}") from None
    if tree.size != checkpoint.get("seq"):
        raise ProofMismatch(f"the signed note of checkpoint {name} is of tree size {tree.size}")
    return SignedTree(note, tree)


@dataclass(frozen=True, slots=True)
class InclusionProof:
    """A record's place in a signed tree (RFC 9162 2.1.3): what `sentinel audit prove --json` prints and
    Go's `tlog.CheckRecord` (tests/interop/tlogcheck) accepts."""

    tree: SignedTree
    leaf_index: int
    """The record's sequence number less one."""
    record: bytes
    """The record as stored."""
    hashes: tuple[bytes, ...]

    @property
    def leaf_hash(self) -> bytes:
        return leaf_hash(self.record)

    def holds(self) -> bool:
        return verify_inclusion(self.leaf_hash, self.leaf_index, self.tree.size, self.hashes, self.tree.root)

    def to_dict(self) -> dict[str, Any]:
        return {
            "origin": self.tree.origin,
            "leaf_index": self.leaf_index,
            "tree_size": self.tree.size,
            "record": b64(self.record),
            "leaf_hash": b64(self.leaf_hash),
            "proof": [b64(h) for h in self.hashes],
            "checkpoint": self.tree.note,
        }


@dataclass(frozen=True, slots=True)
class ConsistencyProof:
    """That the tree of `new_size` extends the tree of `old_size` (RFC 9162 2.1.4), with the signed
    checkpoints at those sizes where the chain has them (Go's `tlog.CheckTree` needs both)."""

    origin: str
    old_size: int
    new_size: int
    old_root: bytes
    new_root: bytes
    hashes: tuple[bytes, ...]
    old_tree: SignedTree | None = None
    new_tree: SignedTree | None = None

    def holds(self) -> bool:
        return verify_consistency(self.old_size, self.new_size, self.old_root, self.new_root, self.hashes)

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "origin": self.origin,
            "old_size": self.old_size,
            "new_size": self.new_size,
            "old_root": b64(self.old_root),
            "new_root": b64(self.new_root),
            "proof": [b64(h) for h in self.hashes],
        }
        if self.old_tree is not None:
            doc["old_checkpoint"] = self.old_tree.note
        if self.new_tree is not None:
            doc["new_checkpoint"] = self.new_tree.note
        return doc


@contextlib.contextmanager
def _quietly(instance: str, size: int) -> Iterator[Progress]:
    yield lambda count: None


@dataclass
class ChainProofs:
    """Proofs of one chain (instance): its signed trees from the store's checkpoints, subtree hashes from
    the writer's tiles (`spool`) when they reach the tree's size, else from the store's records.

        chain = ChainProofs(store, "node-a", trusted, spool=Path("audit/spool.db"))
        proof = await chain.prove(42)           # the record with seq 42, in the newest signed tree
        assert proof.holds()
    """

    store: AuditStore
    instance: str
    public_key: PublicKeys
    spool: Path | None = None
    """The spool of the chain's writer, when it is in this data directory."""
    origin: str | None = None
    """The chain's origin when none of its checkpoints carries a note yet (`note.origin_of`)."""
    rebuilding: Rebuilding = _quietly
    source: str = field(default="", init=False)
    """Where the last proof's subtree hashes came from: `tiles` (the writer's) or `store` (rebuilt)."""
    _noted: list[dict[str, Any]] | None = field(default=None, init=False, repr=False)

    async def noted(self) -> list[dict[str, Any]]:
        """The chain's checkpoints that carry a signed note, oldest first."""
        if self._noted is None:
            checkpoints = await self.store.checkpoints(self.instance)
            self._noted = sorted((c for c in checkpoints if c.get("note")), key=lambda c: int(c["seq"]))
        return self._noted

    async def newest(self) -> SignedTree:
        noted = await self.noted()
        if not noted:
            raise ProofError(f"chain {self.instance} has no checkpoint with a signed tree head in the store")
        return open_tree(noted[-1], self.public_key)

    async def at(self, size: int) -> SignedTree | None:
        """The signed tree of `size` leaves, if a checkpoint was taken there."""
        found = [c for c in await self.noted() if c["seq"] == size]
        return open_tree(found[-1], self.public_key) if found else None

    async def prove(self, seq: int) -> InclusionProof:
        """The record with sequence number `seq` in the newest signed tree; `ProofMismatch` if the
        proof does not hold against its root."""
        tree = await self.newest()
        if not 0 < seq <= tree.size:
            raise ProofError(
                f"no signed checkpoint of chain {self.instance} covers seq {seq} yet (the newest is of "
                f"{tree.size} records); try again after the next checkpoint"
            )
        record = await self._record(seq)
        index, size = seq - 1, tree.size
        subtree = await self._subtrees(
            size, lambda s: (inclusion_proof(index, size, s), range_hash(0, size, s), s(0, index))
        )
        proof = InclusionProof(tree, index, record, tuple(inclusion_proof(index, size, subtree)))
        if not proof.holds():
            if range_hash(0, size, subtree) != tree.root:
                raise ProofMismatch(
                    f"the tree of chain {self.instance} computed from {self._from()} does not have the root "
                    f"that its checkpoint at seq {size} signed"
                )
            raise ProofMismatch(
                f"record {self.instance}:{seq:012d} in the store is not the one the checkpoint at seq {size} signed"
                + (" (the writer's tiles hold another leaf there)" if subtree(0, index) != proof.leaf_hash else "")
            )
        return proof

    async def consistency(self, old: int, new: int | None = None) -> ConsistencyProof:
        """That the tree of `new` leaves (default: the newest signed one) extends the tree of `old`;
        the roots are computed from the tiles and must match the checkpoints signed at those sizes."""
        if new is None:
            newest = await self.newest()
            new_tree: SignedTree | None = newest
            new = newest.size
        else:
            new_tree = await self.at(new)
        if not 0 < old <= new:
            raise ProofError(f"no consistency proof from size {old} to {new}: 0 < old <= new")
        if new_tree is None and new > (held := await self._held()):
            raise ProofError(f"chain {self.instance} has {held} records, not {new}")
        old_tree = await self.at(old)
        subtree = await self._subtrees(
            new, lambda s: (consistency_proof(old, new, s), range_hash(0, old, s), range_hash(0, new, s))
        )
        roots = range_hash(0, old, subtree), range_hash(0, new, subtree)
        for tree, root in ((old_tree, roots[0]), (new_tree, roots[1])):
            if tree is not None and tree.root != root:
                raise ProofMismatch(
                    f"the tree of chain {self.instance} computed from {self._from()} does not have the root "
                    f"that its checkpoint at seq {tree.size} signed"
                )
        origin = next((t.origin for t in (new_tree, old_tree) if t is not None), None) or await self._origin()
        proof = ConsistencyProof(
            origin, old, new, *roots, tuple(consistency_proof(old, new, subtree)), old_tree, new_tree
        )
        if not proof.holds():  # never, with both roots computed from the same tiles: a bug, not tampering
            raise ProofMismatch(f"the consistency proof of chain {self.instance} from {old} to {new} does not hold")
        return proof

    async def _held(self) -> int:
        """The records of the chain the tree can be had for: in the store, or in the writer's tiles."""
        bounds = await self.store.seq_range(self.instance, None, None)
        held = bounds[1] if bounds else 0
        if self.spool is not None:
            held = max(held, await asyncio.to_thread(self._spool_size))
        return held

    def _spool_size(self) -> int:
        assert self.spool is not None
        with contextlib.suppress(SpoolUnavailable), SpoolTiles(self.spool) as tiles:
            return tiles.size()
        return 0

    async def _origin(self) -> str:
        noted = await self.noted()
        if noted:
            return str(noted[-1]["note"]).split("\n", 1)[0]
        if self.origin is None:
            raise ProofError(f"chain {self.instance} has no signed checkpoint to take its origin from")
        return self.origin

    def _from(self) -> str:
        return "the writer's tiles" if self.source == "tiles" else "the store's records"

    async def _record(self, seq: int) -> bytes:
        found = [r for page in [p async for p in self.store.chain_pages(self.instance, seq, seq)] for r in page]
        if not found:
            raise ProofError(f"the store holds no record at seq {seq} of chain {self.instance}")
        if len(found) > 1:
            raise ProofMismatch(f"the store holds {len(found)} records at seq {seq} of chain {self.instance}")
        return found[0].body

    async def _subtrees(self, size: int, reads: Callable[[SubtreeHashes], object]) -> SubtreeHashes:
        """Subtree hashes of the tree of `size` leaves: the writer's tiles when they reach that size,
        else the tiles `reads` needs, rebuilt from the store."""
        wanted = tiles_read(reads)
        tiles = await asyncio.to_thread(self._spool_tiles, size, wanted) if self.spool is not None else None
        self.source = "tiles" if tiles is not None else "store"
        if tiles is None:
            with self.rebuilding(self.instance, size) as progress:
                tiles = await rebuild_tiles(self.store, self.instance, size, wanted=wanted, progress=progress)
        found = tiles
        return TileReader(lambda level, index: found.get((level, index)))

    def _spool_tiles(self, size: int, wanted: Collection[tuple[int, int]]) -> Tiles | None:
        """The `wanted` tiles from the writer's spool, if it holds them all for a tree of `size`."""
        assert self.spool is not None
        try:
            with SpoolTiles(self.spool) as spool:
                if spool.size() < size:
                    return None
                tiles = {key: spool(*key) for key in wanted}
        except SpoolUnavailable:
            return None
        return {key: data for key, data in tiles.items() if data is not None} if all(tiles.values()) else None


async def locate(store: AuditStore, record_id: str) -> tuple[str, int]:
    """`(instance, seq)` of a record by its doc id (`instance:seq`, the sequence number padded or not)
    or its interaction id."""
    doc = await store.get(record_id)
    instance, _, seq = record_id.rpartition(":")
    if doc is None and instance and seq.isdigit():
        doc = await store.get(f"{instance}:{int(seq):012d}")
    if doc is None:
        raise ProofError(f"no audit record {record_id}")
    return str(doc["instance"]), int(doc["seq"])

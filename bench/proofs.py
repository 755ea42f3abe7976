"""Inclusion proofs at scale (issue #14: <= 10 ms on a 10M-record chain): a writer's spool holding the
tiles of a 10M-leaf tree (built directly in the spool's own `tiles` table, leaves `record <i>`), then
2,004 proofs at random leaves (and the ends), timed two ways: the proof's assembly alone (open the spool,
read the tiles it needs, hash, verify against the root) and `ChainProofs.prove` as the CLI runs it
(plus opening the signed note and reading the record, here from a one-record stand-in store).

    python bench/proofs.py /tmp/proofs-10m.db            # builds the tiles once (~10 s, ~330 MiB)
    python bench/proofs.py /tmp/proofs-1m.db 1000000
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from sentinel.audit.note import Checkpoint, sign_checkpoint  # noqa: E402
from sentinel.audit.proofs import ChainProofs, SpoolTiles, tiles_read  # noqa: E402
from sentinel.audit.spool import Spool  # noqa: E402
from sentinel.audit.store import StoredRecord  # noqa: E402
from sentinel.audit.tiles import WIDTH, TileReader, _perfect_root  # noqa: E402
from sentinel.audit.tlog import inclusion_proof, leaf_hash, range_hash, verify_inclusion  # noqa: E402

N = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000_000
path = Path(sys.argv[1])


def record(i: int) -> bytes:
    return b"record %d" % i


def build() -> None:
    spool = Spool(path, synchronous="OFF")
    spool.run_sync(spool.open)
    db = spool.db
    sha = hashlib.sha256
    t0 = time.perf_counter()
    db.execute("BEGIN")
    # level 0
    roots = []
    for t in range((N + WIDTH - 1) // WIDTH):
        data = b"".join(sha(b"\x00record %d" % i).digest() for i in range(t * WIDTH, min(N, (t + 1) * WIDTH)))
        db.execute("INSERT INTO tiles VALUES (0, ?, ?)", (t, data))
        if len(data) == WIDTH * 32:
            roots.append(_perfect_root([data[j : j + 32] for j in range(0, len(data), 32)]))
    level = 1
    while roots:
        nxt = []
        for t in range((len(roots) + WIDTH - 1) // WIDTH):
            part = roots[t * WIDTH : (t + 1) * WIDTH]
            db.execute("INSERT INTO tiles VALUES (?, ?, ?)", (level, t, b"".join(part)))
            if len(part) == WIDTH:
                nxt.append(_perfect_root(part))
        roots, level = nxt, level + 1
    db.execute("COMMIT")
    spool.close()
    print(f"built tiles of {N:,} leaves in {time.perf_counter() - t0:.1f} s; {path.stat().st_size / 2**20:.0f} MiB")


class OneRecordStore:
    """Only what ChainProofs.prove reads: the checkpoints, and one record's stored bytes."""

    def __init__(self, checkpoints: list[dict[str, Any]]) -> None:
        self._checkpoints = checkpoints

    async def checkpoints(self, instance: str) -> list[dict[str, Any]]:
        return self._checkpoints

    async def chain_pages(
        self, instance: str, lo: int, hi: int, *, documents: bool = True
    ) -> AsyncIterator[list[StoredRecord]]:
        yield [StoredRecord(lo, f"bench:{lo:012d}", "", 0.0, "interaction", None, record(lo - 1), {})]


def assemble(seq: int, root: bytes) -> None:
    """The proof alone: open the spool, read the tiles it needs, hash, verify."""
    index = seq - 1
    with SpoolTiles(path) as tiles:
        wanted = tiles_read(lambda subtree: inclusion_proof(index, N, subtree))
        got = {key: tiles(*key) for key in wanted}
    hashes = inclusion_proof(index, N, TileReader(lambda level, at: got.get((level, at))))
    assert verify_inclusion(leaf_hash(record(index)), index, N, hashes, root)


def summary(name: str, seconds: list[float]) -> str:
    xs = sorted(seconds)
    p50, p99, top = statistics.median(xs) * 1e3, xs[int(len(xs) * 0.99)] * 1e3, xs[-1] * 1e3
    return f"{name}: n={len(xs)} p50 {p50:.2f} ms  p99 {p99:.2f} ms  max {top:.2f} ms"


async def bench() -> None:
    with SpoolTiles(path) as tiles:
        assert tiles.size() == N, tiles.size()
        root = range_hash(0, N, TileReader(tiles))
    key = Ed25519PrivateKey.generate()
    note = sign_checkpoint(Checkpoint("sentinel/audit/bench", N, root), key)
    store = OneRecordStore([{"doc_id": f"bench:{N:012d}", "seq": N, "kid": "sk-bench", "note": note}])
    chain = ChainProofs(store, "bench", {"sk-bench": key.public_key()}.get, spool=path)  # type: ignore[arg-type]
    rng = random.Random(7)
    seqs = [rng.randrange(1, N + 1) for _ in range(2000)] + [1, N, N - 1, N // 2 + 1]
    await chain.prove(seqs[0])  # warm the page cache once
    full, assembly = [], []
    for seq in seqs:
        began = time.perf_counter()
        proof = await chain.prove(seq)
        full.append(time.perf_counter() - began)
        assert proof.holds() and chain.source == "tiles" and len(proof.hashes) <= N.bit_length()
        began = time.perf_counter()
        assemble(seq, root)
        assembly.append(time.perf_counter() - began)
    print(summary("proof assembly (spool tiles -> verified proof)", assembly))
    print(summary("ChainProofs.prove (+ note opened, record read)", full))


if __name__ == "__main__":
    if not path.exists():
        build()
    asyncio.run(bench())

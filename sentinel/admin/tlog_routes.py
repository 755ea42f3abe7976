"""The serving instance's chain as a C2SP tlog-tiles log, read-only on the admin port.

`GET /tlog/<instance>/checkpoint` is the newest signed checkpoint (a C2SP signed note) and
`GET /tlog/<instance>/tile/<L>/<N>[.p/<W>]` its Merkle tree's hash tiles, read from the writer's spool,
so any tiles client (Go's `sumdb/tlog.TileHashReader`, a witness, an auditor's script) checks inclusion
and consistency against the signed root without Sentinel's code. They hold hashes and tree sizes only,
never a record, so they are served without a token, as a transparency log is. Entry bundles
(`tile/entries/...`) are not served: a stored record can exceed the bundle's 64 KiB entries and holds
metadata; `sentinel audit prove` hands an auditor a record's bytes with its proof. See docs/anchors.md.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import APIRouter, HTTPException, Response

from sentinel.audit.note import Checkpoint
from sentinel.audit.proofs import SpoolTiles
from sentinel.audit.spool import SpoolUnavailable
from sentinel.audit.tiles import HEIGHT, WIDTH, parse_tile_path

_IMMUTABLE = "public, max-age=31536000, immutable"  # a tile of a given width never changes


def tlog_router(instance: str, spool: Path) -> APIRouter:
    router = APIRouter(prefix="/tlog", tags=["transparency log"])

    def mine(name: str) -> None:
        if name != instance:
            raise HTTPException(404, f"this Sentinel serves the log of its own chain, {instance!r}, not {name!r}")

    def read_note() -> str | None:
        with SpoolTiles(spool) as tiles:
            return tiles.newest_note()

    def read_tile(level: int, index: int, width: int) -> bytes | None:
        # Only what the newest signed checkpoint covers: tiles grow with every batch, and hashes beyond
        # it would tell anyone on the admin port how many records were written since, as they are.
        with SpoolTiles(spool) as tiles:
            note = tiles.newest_note()
            size = Checkpoint.parse(note.rpartition("\n\n")[0] + "\n").size if note else 0
            if (index * WIDTH + width) << (HEIGHT * level) > size:
                return None
            return tiles(level, index)

    @router.get("/{name}/checkpoint", response_class=Response)
    async def checkpoint(name: str) -> Response:
        """The newest signed checkpoint of this instance's chain (c2sp.org/tlog-checkpoint)."""
        mine(name)
        try:
            note = await asyncio.to_thread(read_note)
        except SpoolUnavailable as exc:
            raise HTTPException(503, str(exc)) from None
        if note is None:
            raise HTTPException(404, "no checkpoint signed yet: the chain is empty")
        return Response(note, media_type="text/plain; charset=utf-8", headers={"Cache-Control": "no-store"})

    @router.get("/{name}/tile/{path:path}", response_class=Response)
    async def tile(name: str, path: str) -> Response:
        """A hash tile of this instance's Merkle tree (c2sp.org/tlog-tiles): 32-byte hashes, `W` of them
        for a partial tile `.p/W`, 256 for a full one."""
        mine(name)
        if path.startswith("entries/"):
            raise HTTPException(
                404, "entry bundles are not served: use `sentinel audit prove RECORD` for a record's bytes"
            )
        try:
            level, index, width = parse_tile_path("tile/" + path)
        except ValueError as exc:
            raise HTTPException(404, str(exc)) from None
        try:
            data = await asyncio.to_thread(read_tile, level, index, width)
        except SpoolUnavailable as exc:
            raise HTTPException(503, str(exc)) from None
        # The stored tile may have grown past a partial width asked for: it begins with those hashes.
        if data is None or len(data) < width * 32:
            raise HTTPException(
                404, f"tile {level}/{index} of width {width} is not in the tree of the newest signed checkpoint"
            )
        return Response(
            data[: width * 32],
            media_type="application/octet-stream",
            headers={"Cache-Control": _IMMUTABLE},
        )

    return router

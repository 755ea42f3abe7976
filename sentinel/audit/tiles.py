"""A chain's Merkle tree kept as C2SP tlog-tiles (c2sp.org/tlog-tiles): what makes a proof a few
reads on a tree of any size.

A tile at level `L`, index `n` holds up to 256 hashes: those of the perfect subtrees of height 8L over
leaves, numbers [256n, 256n + 256) at that height (level 0 holds leaf hashes). A tile is full at 256
hashes; the rightmost tile of each level may be partial. `TreeBuilder` appends leaves, keeps the
rightmost tiles in memory and says which tiles changed; `TileReader` answers the hash of any perfect
subtree from tiles (hashing up at most 128 hashes within one tile), which is what `tlog`'s proofs read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from sentinel.audit.tlog import CompactRange, node_hash

HEIGHT = 8
WIDTH = 1 << HEIGHT

TileGetter = Callable[[int, int], bytes | None]
"""`(level, index)` -> the tile's concatenated hashes (full or partial), None when absent."""


def _perfect_root(hashes: list[bytes]) -> bytes:
    while len(hashes) > 1:
        hashes = [node_hash(hashes[i], hashes[i + 1]) for i in range(0, len(hashes), 2)]
    return hashes[0]


class TileReader:
    """Perfect subtree hashes read from tiles (`tlog.SubtreeHashes`)."""

    def __init__(self, tile: TileGetter) -> None:
        self.tile = tile
        self._cache: dict[tuple[int, int], bytes] = {}

    def _tile(self, level: int, index: int) -> bytes:
        key = (level, index)
        data = self._cache.get(key)
        if data is None:
            data = self.tile(level, index)
            if data is None:
                raise LookupError(f"tile {level}/{index} is missing")
            self._cache[key] = data
        return data

    def __call__(self, level: int, index: int) -> bytes:
        tile_level, height = divmod(level, HEIGHT)
        first = index << height  # the first hash at the tile level
        data = self._tile(tile_level, first // WIDTH)
        start = (first % WIDTH) * 32
        count = 1 << height
        if len(data) < start + count * 32:
            raise LookupError(f"subtree {level}/{index} is not complete in the tiles")
        return _perfect_root([data[start + 32 * i : start + 32 * i + 32] for i in range(count)])


class TreeBuilder:
    """Appends leaf hashes to a tree kept as tiles, and keeps its compact range for roots."""

    def __init__(self, size: int = 0, edge: dict[int, list[bytes]] | None = None) -> None:
        self.size = size
        self.edge: dict[int, list[bytes]] = edge or {}
        """The rightmost (partial) tile of each level: its hashes so far."""
        self._changed: dict[tuple[int, int], bytes | None] = {}
        """Tiles to store: completed ones with their bytes, partial ones (None: read from `edge`)."""

    @classmethod
    def resume(cls, size: int, tile: TileGetter) -> TreeBuilder:
        """The builder of a tree of `size` leaves, its rightmost tiles read back."""
        edge: dict[int, list[bytes]] = {}
        level, count = 0, size
        while count:
            index, width = divmod(count, WIDTH)
            if width:
                data = tile(level, index)
                if data is None or len(data) < width * 32:
                    raise LookupError(f"tile {level}/{index} is missing or short: the tree cannot resume")
                edge[level] = [data[32 * i : 32 * i + 32] for i in range(width)]
            count //= WIDTH
            level += 1
        return cls(size, edge)

    def copy(self) -> TreeBuilder:
        builder = TreeBuilder(self.size, {level: list(hashes) for level, hashes in self.edge.items()})
        builder._changed = dict(self._changed)
        return builder

    def append(self, leaf: bytes) -> None:
        level, digest, position = 0, leaf, self.size
        self.size += 1
        while True:
            hashes = self.edge.setdefault(level, [])
            hashes.append(digest)
            index = position // WIDTH
            if len(hashes) < WIDTH:
                self._changed[(level, index)] = None
                return
            self._changed[(level, index)] = b"".join(hashes)
            digest = _perfect_root(hashes)
            del self.edge[level]
            level, position = level + 1, index

    def tile(self, level: int, index: int) -> bytes | None:
        """A tile still being built (the rightmost of its level), or None."""
        hashes = self.edge.get(level)
        if hashes is None or index != (self.size >> (HEIGHT * level)) // WIDTH:
            return None
        return b"".join(hashes)

    def take_changed(self) -> list[tuple[int, int, bytes]]:
        """The tiles changed since the last call, `(level, index, hashes)`, to store."""
        out = []
        for (level, index), data in sorted(self._changed.items()):
            data = data if data is not None else self.tile(level, index)
            if data is not None:
                out.append((level, index, data))
        self._changed.clear()
        return out

    def compact_range(self, subtree: Callable[[int, int], bytes]) -> CompactRange:
        """The compact range of leaves [0, size): perfect subtrees by the binary digits of the size."""
        subtrees = []
        at = 0
        for level in range(self.size.bit_length() - 1, -1, -1):
            if self.size >> level & 1:
                subtrees.append((level, subtree(level, at >> level)))
                at += 1 << level
        return CompactRange(0, self.size, subtrees)


def tiles_of(leaves: Iterable[bytes]) -> dict[tuple[int, int], bytes]:
    """Every tile of the tree over `leaves` (for rebuilding from a store, and for tests)."""
    builder = TreeBuilder()
    tiles: dict[tuple[int, int], bytes] = {}
    for leaf in leaves:
        builder.append(leaf)
        for level, index, data in builder.take_changed():
            if len(data) == WIDTH * 32:
                tiles[(level, index)] = data
    for level, hashes in builder.edge.items():
        tiles[(level, (builder.size >> (HEIGHT * level)) // WIDTH)] = b"".join(hashes)
    return tiles


def tile_path(level: int, index: int, width: int = WIDTH) -> str:
    """A hash tile's path in C2SP tlog-tiles: `tile/<L>/<N>[.p/<W>]`, the index in 3-digit elements, all
    but the last prefixed `x` (index 1234067 is `x001/x234/067`); `.p/<W>` only for a partial tile."""
    digits = f"{index % 1000:03d}"
    while index >= 1000:
        index //= 1000
        digits = f"x{index % 1000:03d}/{digits}"
    return f"tile/{level}/{digits}" + (f".p/{width}" if width != WIDTH else "")


def parse_tile_path(path: str) -> tuple[int, int, int]:
    """`(level, index, width)` from a C2SP hash tile path (`tile_path`'s inverse); `ValueError` for any
    path not in its one canonical spelling (leading zeros, a needless `x000`, a width of 0 or 256)."""
    parts = path.split("/")
    if len(parts) < 3 or parts[0] != "tile":
        raise ValueError(f"{path!r} is not a tile path")
    level, elements = parts[1], parts[2:]
    width = WIDTH
    if len(elements) >= 2 and elements[-2].endswith(".p"):
        if not _decimal(elements[-1]) or not 0 < int(elements[-1]) < WIDTH:
            raise ValueError(f"{path!r}: a partial tile's width is 1 to {WIDTH - 1}")
        width = int(elements[-1])
        elements = [*elements[:-2], elements[-2][:-2]]
    if not _decimal(level) or int(level) > 63:
        raise ValueError(f"{path!r}: the level is a decimal number from 0 to 63")
    *upper, last = elements
    if not (len(last) == 3 and last.isdigit() and last.isascii()):
        raise ValueError(f"{path!r}: the index ends in 3 digits")
    if any(not (len(e) == 4 and e[0] == "x" and e[1:].isdigit() and e[1:].isascii()) for e in upper):
        raise ValueError(f"{path!r}: the index's leading elements are x and 3 digits")
    index = int("".join(e.removeprefix("x") for e in elements))
    if tile_path(int(level), index, width) != path:
        raise ValueError(f"{path!r} is not the canonical path of tile {level}/{index}")
    return int(level), index, width


def _decimal(text: str) -> bool:
    return text.isascii() and text.isdigit() and (text == "0" or not text.startswith("0"))

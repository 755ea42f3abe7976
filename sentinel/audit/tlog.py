"""The Merkle tree over each chain: RFC 9162 (RFC 6962) hashing, compact ranges, proofs.

Leaf `i` of an instance's tree is its record with sequence number `i + 1`, hashed over the record's
stored bytes: leaf = SHA-256(0x00 || stored record), node = SHA-256(0x01 || left || right), so the
tree size of a chain is its newest sequence number. Any transparency-log client (Go's
`golang.org/x/mod/sumdb/tlog`, for one) checks the proofs made here against a signed checkpoint.

A `CompactRange` is the list of perfect, aligned subtrees covering leaves [begin, end): what the
writer keeps to sign roots as it appends, and what the verifier's workers return for each page
(ranges are merged in order: the root of [0, n) folds the subtrees from the right). Proofs read the
hashes of perfect subtrees through a `SubtreeHashes` reader (C2SP tlog-tiles, see tiles.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

EMPTY_ROOT = hashlib.sha256(b"").digest()

SubtreeHashes = Callable[[int, int], bytes]
"""`(level, index)` -> the hash of the perfect subtree over leaves [index * 2**level, (index + 1) * 2**level)."""


def leaf_hash(record: bytes) -> bytes:
    digest = hashlib.sha256(b"\x00")
    digest.update(record)  # no copy of the record
    return digest.digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


@dataclass(slots=True)
class CompactRange:
    """Leaves [begin, end) as perfect aligned subtrees, left to right (each `(level, hash)`)."""

    begin: int = 0
    end: int = 0
    subtrees: list[tuple[int, bytes]] = field(default_factory=list)

    def append(self, leaf: bytes) -> None:
        """Add the next leaf's hash."""
        self._push(0, leaf)
        self.end += 1

    def _push(self, level: int, digest: bytes) -> None:
        """Add a perfect subtree of `level` starting at `end` (aligned to its size), merging it with its
        left sibling while that is the last subtree."""
        subtrees, start = self.subtrees, self.end
        subtrees.append((level, digest))
        while len(subtrees) >= 2 and subtrees[-2][0] == level and (start - (1 << level)) % (2 << level) == 0:
            left = subtrees[-2][1]
            del subtrees[-2:]
            subtrees.append((level + 1, node_hash(left, digest)))
            start -= 1 << level
            level, digest = level + 1, subtrees[-1][1]

    def extend(self, other: CompactRange) -> None:
        """Append the range that starts where this one ends."""
        if other.begin != self.end:
            raise ValueError(f"range [{other.begin}, {other.end}) does not follow [{self.begin}, {self.end})")
        for level, digest in other.subtrees:
            self._push(level, digest)
            self.end += 1 << level

    def root(self) -> bytes:
        """The tree head of leaves [0, end) (the range must begin at 0)."""
        if self.begin != 0:
            raise ValueError("only a range from leaf 0 has a root")
        if not self.subtrees:
            return EMPTY_ROOT
        digest = self.subtrees[-1][1]
        for _, left in reversed(self.subtrees[:-1]):
            digest = node_hash(left, digest)
        return digest

    def copy(self) -> CompactRange:
        return CompactRange(self.begin, self.end, list(self.subtrees))


def tree_hash(leaves: Sequence[bytes]) -> bytes:
    """MTH of the leaf hashes (RFC 9162 2.1.1), directly: for tests and small trees."""
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    return node_hash(tree_hash(leaves[:k]), tree_hash(leaves[k:]))


def range_hash(begin: int, end: int, subtree: SubtreeHashes) -> bytes:
    """MTH of leaves [begin, end) where `begin` is aligned to the largest power of two that fits, as
    every range in RFC 9162's proofs is: the perfect subtrees covering it, folded from the right."""
    parts: list[bytes] = []
    at = begin
    while at < end:
        level = (end - at).bit_length() - 1
        while at % (1 << level):
            level -= 1
        parts.append(subtree(level, at >> level))
        at += 1 << level
    digest = parts[-1]
    for left in reversed(parts[:-1]):
        digest = node_hash(left, digest)
    return digest


def inclusion_proof(index: int, size: int, subtree: SubtreeHashes) -> list[bytes]:
    """PATH(index, D[size]) (RFC 9162 2.1.3.1), leaf-side first."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of {size}")
    proof: list[bytes] = []
    begin, end = 0, size
    while end - begin > 1:
        k = _split(end - begin)
        if index < begin + k:
            proof.append(range_hash(begin + k, end, subtree))
            end = begin + k
        else:
            proof.append(range_hash(begin, begin + k, subtree))
            begin += k
    proof.reverse()
    return proof


def consistency_proof(old: int, new: int, subtree: SubtreeHashes) -> list[bytes]:
    """PROOF(old, D[new]) (RFC 9162 2.1.4.1)."""
    if not 0 < old <= new:
        raise ValueError(f"no consistency proof from {old} to {new}")
    proof: list[bytes] = []
    begin, end, m, whole = 0, new, old, True
    while m != end - begin:
        k = _split(end - begin)
        if m <= k:
            proof.append(range_hash(begin + k, end, subtree))
            end = begin + k
        else:
            proof.append(range_hash(begin, begin + k, subtree))
            begin, m, whole = begin + k, m - k, False
    if not whole:
        proof.append(range_hash(begin, end, subtree))
    proof.reverse()
    return proof


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """RFC 9162 2.1.3.2."""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(old: int, new: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> bool:
    """RFC 9162 2.1.4.2."""
    if not 0 < old <= new:
        return False
    if old == new:
        return not proof and old_root == new_root
    path = list(proof)
    if old & (old - 1) == 0:  # a power of two: the old root is the first node of the path
        path.insert(0, old_root)
    if not path:
        return False
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root

"""Sealed objects: AES-256-GCM with a fresh 96-bit nonce and associated data naming what the object is.

What the associated data binds (and why): a chunk is content-addressed and shared by every snapshot
that contains it, so binding it to one snapshot would defeat deduplication. A chunk is bound to the
repository id and its own chunk id: it cannot be renamed, swapped for another chunk or moved from
another repository without failing authentication. A manifest is bound to the repository id and its
snapshot id, and it lists every chunk id with its size and the SHA-256 of every file, so a snapshot
is bound to exactly its chunks through the (signed) manifest.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"SNB\x01"
NONCE_BYTES = 12
TAG_BYTES = 16
OVERHEAD = len(MAGIC) + NONCE_BYTES + TAG_BYTES


class AuthenticationError(Exception):
    """The object does not decrypt under this key and associated data: tampered, misplaced or a wrong key."""


def associated_data(kind: str, repository_id: str, object_id: str) -> bytes:
    return b"\0".join((b"sentinel-backup/v1", kind.encode(), repository_id.encode(), object_id.encode()))


def seal(aead: AESGCM, plaintext: bytes | memoryview, aad: bytes) -> bytearray:
    """MAGIC, nonce, ciphertext and tag, encrypted straight into the one buffer (no copies of a
    chunk's bytes besides the encryption itself: at backup speed each copy is ~0.5 s of CPU per GiB)."""
    nonce = os.urandom(NONCE_BYTES)
    header = len(MAGIC) + NONCE_BYTES
    blob = bytearray(header + len(plaintext) + TAG_BYTES)
    blob[: len(MAGIC)] = MAGIC
    blob[len(MAGIC) : header] = nonce
    aead.encrypt_into(nonce, plaintext, aad, memoryview(blob)[header:])
    return blob


def unseal(aead: AESGCM, blob: bytes, aad: bytes) -> bytes:
    if len(blob) < OVERHEAD or blob[: len(MAGIC)] != MAGIC:
        raise AuthenticationError("not a sealed Sentinel backup object (bad header or truncated)")
    view = memoryview(blob)
    nonce = view[len(MAGIC) : len(MAGIC) + NONCE_BYTES]
    try:
        return aead.decrypt(nonce, view[len(MAGIC) + NONCE_BYTES :], aad)
    except InvalidTag:
        raise AuthenticationError("authentication failed (modified object or wrong key)") from None

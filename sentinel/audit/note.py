"""C2SP signed notes and tlog checkpoints (c2sp.org/signed-note, c2sp.org/tlog-checkpoint).

A checkpoint names a chain's Merkle tree by its origin, size and root hash:

    sentinel.local/audit/node-a
    40
    <base64 root hash>

and is signed as a note: the text, a blank line, then one line per signature, `— <key name>
<base64(key id || Ed25519 signature over the text)>`. The key name is the origin; the key id is the
first 4 bytes of SHA-256(name || 0x0A || 0x01 || public key). A verifier key is written
`<name>+<key id in hex>+<base64(0x01 || public key)>`, the form Go's `golang.org/x/mod/sumdb/note`
(and every transparency-log client) reads.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from sentinel.audit.signer import Signer

ED25519 = b"\x01"
DASH = "\u2014 "


class NoteError(ValueError):
    """A note or checkpoint that is malformed, or not signed by a trusted key."""


def origin_of(prefix: str, instance: str) -> str:
    """The origin line (and key name) of an instance's log: `<prefix>/<instance>`."""
    origin = f"{prefix.rstrip('/')}/{instance}"
    if any(c.isspace() or c == "+" for c in origin) or not origin.isprintable():
        raise NoteError(f"{origin!r} cannot name a log: no spaces, '+' or control characters")
    return origin


def _raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(name: str, key: Ed25519PublicKey) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + ED25519 + _raw(key)).digest()[:4]


def verifier_key(name: str, key: Ed25519PublicKey) -> str:
    """`name+hash+base64key`: how a verifier key is published (`sentinel keys show --public`)."""
    return f"{name}+{key_id(name, key).hex()}+{base64.b64encode(ED25519 + _raw(key)).decode()}"


@dataclass(frozen=True, slots=True)
class Verifier:
    name: str
    key: Ed25519PublicKey

    @property
    def id(self) -> bytes:
        return key_id(self.name, self.key)

    @classmethod
    def parse(cls, text: str) -> Verifier:
        """A verifier key in `name+hash+base64key` form; `NoteError` if it is not one."""
        try:
            name, hex_id, encoded = text.strip().split("+", 2)
            raw = base64.b64decode(encoded, validate=True)
            if not name or raw[:1] != ED25519 or len(raw) != 33:
                raise ValueError("not an Ed25519 key")
            verifier = cls(name, Ed25519PublicKey.from_public_bytes(raw[1:]))
            if verifier.id.hex() != hex_id.lower():
                raise ValueError("its key id does not match the key")
        except (ValueError, binascii.Error) as exc:
            raise NoteError(f"not a verifier key (name+hash+base64key): {exc}") from None
        return verifier


def sign(text: str, name: str, key: Signer) -> str:
    """The signed note: `text` (ending in a newline), a blank line, the signature line."""
    if not text.endswith("\n"):
        raise NoteError("a note's text ends with a newline")
    signature = key.sign(text.encode())
    line = base64.b64encode(key_id(name, key.public_key()) + signature).decode()
    return f"{text}\n{DASH}{name} {line}\n"


def open_note(note: str, verifiers: list[Verifier]) -> tuple[str, list[Verifier]]:
    """The note's text and the verifiers whose signatures on it hold; `NoteError` when none of
    them signed it (or the note is malformed). Signatures by unknown keys are ignored, as the
    specification says."""
    text, sep, signatures = note.rpartition("\n\n")
    if not sep or not signatures.endswith("\n"):
        raise NoteError("not a signed note: no blank line before the signatures")
    text += "\n"
    if any(ord(c) < 0x20 and c != "\n" for c in note):
        raise NoteError("a note contains no control characters but newlines")
    verified = []
    for line in signatures.rstrip("\n").split("\n"):
        if not line.startswith(DASH):
            raise NoteError(f"not a signature line: {line[:40]!r}")
        name, _, encoded = line[len(DASH) :].rpartition(" ")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise NoteError(f"signature by {name} is not base64") from None
        for verifier in verifiers:
            if verifier.name == name and raw[:4] == verifier.id:
                try:
                    verifier.key.verify(raw[4:], text.encode())
                except InvalidSignature:
                    raise NoteError(f"the signature by {name} does not verify: the note was altered") from None
                verified.append(verifier)
    if not verified:
        raise NoteError("the note is not signed by a trusted key")
    return text, verified


@dataclass(frozen=True, slots=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def text(self) -> str:
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode(), *self.extensions]
        return "\n".join(lines) + "\n"

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        lines = text.split("\n")
        if len(lines) < 4 or lines[-1] != "":
            raise NoteError("a checkpoint has an origin, a size and a root hash, each on a line")
        origin, size, root = lines[0], lines[1], lines[2]
        try:
            if not size.isdigit() or (size.startswith("0") and size != "0"):
                raise ValueError("bad tree size")
            digest = base64.b64decode(root, validate=True)
            if len(digest) != 32:
                raise ValueError("a root hash has 32 bytes")
        except (ValueError, binascii.Error) as exc:
            raise NoteError(f"not a checkpoint: {exc}") from None
        if not origin:
            raise NoteError("not a checkpoint: empty origin")
        return cls(origin, int(size), digest, tuple(lines[3:-1]))


def sign_checkpoint(checkpoint: Checkpoint, key: Signer) -> str:
    """A checkpoint signed as a note, with the origin as the key name."""
    return sign(checkpoint.text(), checkpoint.origin, key)


def open_checkpoint(note: str, verifiers: list[Verifier]) -> Checkpoint:
    """The checkpoint in a signed note, when a trusted key for its origin signed it."""
    text, signed_by = open_note(note, verifiers)
    checkpoint = Checkpoint.parse(text)
    if all(v.name != checkpoint.origin for v in signed_by):
        raise NoteError(f"the checkpoint of {checkpoint.origin} is not signed by a key of that name")
    return checkpoint

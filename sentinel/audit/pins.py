"""Pinned checkpoint keys: the pin file auditors keep, and which public keys a verification trusts.

Without pins a verification trusts the signing keys stored beside the records, so whoever can write
the store and holds the key-encryption key can add a key, re-sign a rewritten trail and pass. With
pins (`sentinel keys show --public > pins.txt`, `audit.pinned_keys` or `--public-key`) only the pinned
public keys are trusted, and each signing key in the store that is not pinned is a finding itself.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sentinel.audit.keyring import WrappedKey
from sentinel.audit.note import NoteError, Verifier, verifier_key
from sentinel.audit.store import AuditStore

if TYPE_CHECKING:
    from sentinel.config import Settings

MAKE_ONE = "make a pin file with `sentinel keys show --public > pins.txt`"
NOT_PINNED = (
    "verified against the signing keys stored in the audit store itself (not pinned): an operator with the "
    "key-encryption key could re-sign a rewritten trail"
)


NOTE_VERIFIER = "# note-verifier: "
"""How a pin file carries a chain's C2SP verifier key (`name+hash+base64key`): on a comment line, so that
readers of `KID BASE64` lines skip it and transparency-log clients can take it as it is."""


def pin_file_text(keys: Iterable[WrappedKey], origins: Iterable[str] = ()) -> str:
    """A pin file pinning the signing keys among `keys` (what `sentinel keys show --public` prints), and
    for each of the chains named by their `origins` and each of those keys, a `# note-verifier:` line
    with its verifier key for the chain's signed checkpoints (`sentinel audit checkpoint`, `prove`)."""
    public = {key.kid: key.public for key in keys if key.public}
    lines = ["# Sentinel checkpoint signing keys: KID BASE64 (raw Ed25519 public key), one a line"]
    lines += [f"{kid} {key}" for kid, key in sorted(public.items())]
    verifiers = [
        verifier_key(origin, Ed25519PublicKey.from_public_bytes(_decoded(key)))
        for origin in sorted(set(origins))
        for _, key in sorted(public.items())
    ]
    if verifiers:
        lines += [
            "#",
            "# The same keys as C2SP note verifier keys (name+hash+base64key), one per chain and key: what",
            "# transparency-log clients check `sentinel audit checkpoint/prove/consistency` output with.",
        ]
        lines += [NOTE_VERIFIER + verifier for verifier in verifiers]
    return "\n".join(lines) + "\n"


def note_verifiers(text: str) -> list[Verifier]:
    """The verifier keys on a pin file's `# note-verifier:` lines; `NoteError` for one that is not."""
    return [
        Verifier.parse(line.strip()[len(NOTE_VERIFIER) :])
        for line in text.splitlines()
        if line.strip().startswith(NOTE_VERIFIER)
    ]


class PinFileError(ValueError):
    """A pin file that cannot be read or is not one; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class PinFile:
    """One pin file: `KID BASE64` lines (raw Ed25519 public keys), `#` comments and blank lines."""

    path: Path
    sha256: str
    """Of the file's bytes: what a report names so that an auditor can tell it is their file."""
    keys: dict[str, bytes]
    origins: frozenset[str] = frozenset()
    """The chains' C2SP origins its `# note-verifier:` lines name (`<log_origin>/<instance>`)."""

    @classmethod
    def read(cls, path: Path) -> PinFile:
        path = path.absolute()  # a report names it: from anywhere
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise PinFileError(f"cannot read pin file {path}: {exc.strerror or exc}; {MAKE_ONE}") from None
        keys: dict[str, bytes] = {}
        origins: set[str] = set()
        for number, line in enumerate(data.decode(errors="replace").splitlines(), 1):
            text = line.strip()
            if text.startswith(NOTE_VERIFIER.strip()):
                try:
                    origins.add(Verifier.parse(text[len(NOTE_VERIFIER.strip()) :].strip()).name)
                except NoteError as exc:
                    raise PinFileError(f"{path}:{number} is not a note verifier key line ({exc})") from None
                continue
            if not text or text.startswith("#"):
                continue
            parts = text.split()
            try:
                if len(parts) != 2:
                    raise ValueError("expected `KID BASE64`")
                raw = base64.b64decode(parts[1], validate=True)
                Ed25519PublicKey.from_public_bytes(raw)
            except (ValueError, binascii.Error) as exc:
                raise PinFileError(f"{path}:{number} is not a pinned key line ({exc}); {MAKE_ONE}") from None
            if keys.get(parts[0], raw) != raw:
                raise PinFileError(f"{path}:{number} pins {parts[0]} a second time, to a different key")
            keys[parts[0]] = raw
        return cls(path, hashlib.sha256(data).hexdigest(), keys, frozenset(origins))


@dataclass(frozen=True, slots=True)
class Pins:
    """The pinned keys of one or more pin files."""

    files: tuple[PinFile, ...]
    keys: dict[str, Ed25519PublicKey]
    raw: dict[str, bytes]

    @classmethod
    def read(cls, paths: Iterable[Path]) -> Pins:
        """Raises `PinFileError` for a file that is not a pin file, or when no key is pinned at all."""
        files = tuple(PinFile.read(path) for path in paths)
        raw: dict[str, bytes] = {}
        for pin_file in files:
            for kid, key in pin_file.keys.items():
                if raw.get(kid, key) != key:
                    raise PinFileError(f"{pin_file.path} pins {kid} to a different key than an earlier pin file")
                raw[kid] = key
        if not raw:
            raise PinFileError(f"no pinned keys in {', '.join(str(f.path) for f in files)}; {MAKE_ONE}")
        return cls(files, {kid: Ed25519PublicKey.from_public_bytes(key) for kid, key in raw.items()}, raw)

    def describe(self) -> str:
        return ", ".join(f"{f.path} (sha256 {f.sha256})" for f in self.files)

    @property
    def log_origin(self) -> str | None:
        """The `audit.log_origin` the pinned note verifier keys name (`<log_origin>/<instance>`): the
        auditor's, which verification holds the trail to instead of the operator's settings. None when the
        pin files name no chain; `PinFileError` when they name chains under different origins."""
        prefixes = {origin.rpartition("/")[0] for f in self.files for origin in f.origins}
        if len(prefixes) > 1:
            raise PinFileError(
                f"the note verifier keys in {self.describe()} name several log origins: {sorted(prefixes)}"
            )
        return next(iter(prefixes), None)


def configured_pins(settings: Settings) -> Pins | None:
    """The pin file `audit.pinned_keys` names, or None; `PinFileError` names the setting."""
    path = settings.audit.pinned_keys
    if path is None:
        return None
    try:
        return Pins.read([settings.resolve_path(path)])
    except PinFileError as exc:
        raise PinFileError(f"audit.pinned_keys (env SENTINEL_AUDIT_PINNED_KEYS): {exc}") from None


@dataclass(frozen=True, slots=True)
class KeyFinding:
    """A signing key in the store that the pins do not vouch for."""

    kind: str
    """`unpinned_key`: stored, not pinned; `key_mismatch`: pinned under its id, but to another key."""
    kid: str
    detail: str


@dataclass
class TrustedKeys:
    """The checkpoint public keys a verification trusts (called as `PublicKeys`), where they come from,
    and what the store's own signing keys say against the pins."""

    keys: dict[str, Ed25519PublicKey]
    pins: Pins | None
    stored: list[str] = field(default_factory=list)
    """The signing keys in the store, by id."""
    findings: list[KeyFinding] = field(default_factory=list)

    def __call__(self, kid: str) -> Ed25519PublicKey | None:
        return self.keys.get(kid)

    @property
    def pinned(self) -> bool:
        return self.pins is not None

    def log_origin(self, configured: str) -> str:
        """The log origin to hold the trail to: the pinned note verifier keys' when they name one (the
        auditor's), else `configured` (`audit.log_origin`, the operator's)."""
        return (self.pins.log_origin if self.pins is not None else None) or configured

    def statement(self) -> str:
        if self.pins is None:
            return NOT_PINNED
        return f"verified against the keys pinned in {self.pins.describe()}: {', '.join(sorted(self.keys))}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "pinned": self.pinned,
            "statement": self.statement(),
            "pin_files": [{"path": str(f.path), "sha256": f.sha256} for f in (self.pins.files if self.pins else ())],
            "trusted_kids": sorted(self.keys),
            "stored_signing_kids": sorted(self.stored),
            "findings": [{"kind": f.kind, "kid": f.kid, "detail": f.detail} for f in self.findings],
        }


async def trusted_keys(store: AuditStore, pins: Pins | None) -> TrustedKeys:
    """What to trust for `store`: the pinned keys when there are pins, else the store's own signing keys.

    With pins, every signing key in the store must be pinned, with the same public key: a key added to
    the store (to re-sign a rewritten trail, say) is an `unpinned_key` finding even if no checkpoint
    names it, and a stored key whose public half differs from its pin is a `key_mismatch`."""
    stored: dict[str, set[bytes]] = {}
    for key in await store.keys():
        if key.public:
            stored.setdefault(key.kid, set()).add(_decoded(key.public))
    if pins is None:
        keys = {
            kid: Ed25519PublicKey.from_public_bytes(raw)
            for kid, publics in stored.items()
            for raw in sorted(publics)
            if len(raw) == 32
        }
        return TrustedKeys(keys, None, sorted(stored))
    findings = []
    for kid, publics in sorted(stored.items()):
        pinned = pins.raw.get(kid)
        if pinned is None:
            findings.append(
                KeyFinding(
                    "unpinned_key",
                    kid,
                    f"signing key {kid} is in the audit store but not in the pin file; it is not trusted",
                )
            )
        elif publics != {pinned}:
            findings.append(
                KeyFinding(
                    "key_mismatch",
                    kid,
                    f"the audit store holds a different public key for {kid} than the pin file; the pinned one is "
                    "trusted",
                )
            )
    return TrustedKeys(dict(pins.keys), pins, sorted(stored), findings)


def _decoded(public: str) -> bytes:
    try:
        return base64.b64decode(public, validate=True)
    except (ValueError, binascii.Error):
        return public.encode()  # not a key: it can match no pin

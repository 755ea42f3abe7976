"""Reading the anchors back: the Merkle roots each chain must give, and what is wrong in the bucket itself.

`read_anchors` lists every checkpoint anchored under `<audit.log_origin>/` (the keys name each tree size
and root), reads the newest of each chain and every one with a history, opens them with the trusted
signing keys and checks their RFC 3161 tokens (`every=True` reads them all);
`verify(..., anchored=reading.roots)` then recomputes each chain's tree against those roots
(`anchor_mismatch`, `truncated`). See docs/anchors.md, "Verifying against the anchors".
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sentinel.audit.anchor.s3 import AnchoredCheckpoint, AnchorListing, ObjectLockAnchor
from sentinel.audit.anchor.tsa import TimestampError, TimestampTrust, verify_token
from sentinel.audit.note import Checkpoint, NoteError, Verifier, open_checkpoint
from sentinel.audit.walk import Finding
from sentinel.periods import iso

if TYPE_CHECKING:
    from sentinel.config import Settings

__all__ = ["NOT_ANCHORED", "AnchorReading", "AnchoredHead", "read_anchors", "read_configured", "timestamp_trust"]

NOT_ANCHORED = (
    "not verified against anchors: no anchor is configured (audit.anchor), so nothing outside the operator's "
    "reach vouches for the checkpoints, and a trail rewritten and re-signed with the real key would verify"
)


@dataclass(frozen=True, slots=True)
class AnchoredHead:
    """A chain's newest validly signed anchored checkpoint: its tree size, and when its verified RFC 3161
    token says it existed (None: no token, or tokens not checked)."""

    size: int
    stamped_at: datetime | None = None


@dataclass
class AnchorReading:
    """What the anchors vouch for. `roots` (instance -> tree size -> root) holds each size's first anchored
    key, minus the notes read and found not validly signed."""

    where: str
    roots: dict[str, dict[int, bytes]] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    anchored: int = 0
    """Anchored checkpoints whose roots are compared: those in `roots`."""
    signed: int = 0
    """Of those, the ones read whose note a trusted key signed (all of them with `every`)."""
    stamped: int = 0
    """Of those, the ones whose token verified (0 when `timestamps` is None)."""
    every: bool = False
    """Every note was read and opened, not only the newest of each chain and those with a history."""
    timestamps: str | None = None
    """Whom the tokens were verified against (the TSA roots' subjects); None: tokens not checked."""
    heads: dict[str, AnchoredHead] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    """Origins in the bucket under another prefix than this deployment's `audit.log_origin`."""
    log_origin: str = ""
    """The origin prefix read (`<log_origin>/<instance>`): the chains' notes must name it exactly."""
    anchored_before: float | None = None
    """Checkpoints signed before this time must be anchored (`read_configured`: now - audit.anchor_lag_max)."""

    def statement(self) -> str:
        """What was verified against, for reports, drills and `sentinel audit verify`."""
        text = f"verified against {self.anchored} checkpoints anchored in {self.where} (Object Lock, COMPLIANCE)"
        text += (
            ", every note's signature checked"
            if self.every
            else f", roots as their keys name them, {self.signed} note(s) read (each chain's newest) "
            "and their signatures checked"
        )
        if self.timestamps is None:
            return text + ", time-stamp tokens not checked (no audit.timestamp configured)"
        return text + f", {self.stamped} time-stamped by {self.timestamps} (RFC 3161)"

    def within(self, heads: Mapping[str, int]) -> dict[str, dict[int, bytes]]:
        """`roots` of the chains in `heads` (instance -> newest seq held) up to that seq: what a copy taken
        earlier (a restored backup) can be checked against; anchored later than the copy is not compared."""
        return {
            name: {size: root for size, root in self.roots.get(name, {}).items() if size <= head}
            for name, head in heads.items()
            if name in self.roots
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "where": self.where,
            "statement": self.statement(),
            "anchored": self.anchored,
            "signatures_checked": self.signed,
            "every_note_read": self.every,
            "time_stamped": self.stamped,
            "timestamps_verified_against": self.timestamps,
            "chains": [
                {
                    "instance": name,
                    "size": head.size,
                    "time_stamped_at": iso(head.stamped_at.timestamp()) if head.stamped_at else None,
                }
                for name, head in sorted(self.heads.items())
            ],
            "ignored_origins": list(self.ignored),
            "findings": [
                {"kind": f.kind, "instance": f.instance, "seq": f.seq, "detail": f.detail} for f in self.findings
            ],
        }


async def read_anchors(
    anchor: ObjectLockAnchor,
    verifiers: Mapping[str, Ed25519PublicKey],
    origin_prefix: str,
    trust: TimestampTrust | None,
    *,
    every: bool = False,
    expected: Iterable[str] = (),
) -> AnchorReading:
    """Every checkpoint anchored for this deployment's chains, checked.

    The roots come from one listing of the bucket: each key names the tree size and root its note signs,
    and a key cannot be written over. A root no trusted key signed can only make verification fail,
    never pass (it is compared with the records' tree like the others), so only these are read: each
    chain's newest anchored note (the truncation bound; read until a validly signed one is found) and
    every one with a history. `every` reads all of them, so a root in a key whose note no trusted key
    signed is named (`anchor_invalid`) and not compared.

    `expected` names the chains the caller holds (the store's instances): each is listed directly under
    its origin, whatever the walk of the bucket's folders finds.

    `verifiers` are the trusted signing keys (kid -> public key; pinned ones where there are pins): a note
    read that none of them signed for its origin, size and root is `anchor_invalid` and gives no root. A
    key written over or deleted after it was anchored, or a second root for one size, is
    `anchor_rewritten` (the first version of the first key is still the one used). With `trust`, a token
    that does not verify for its note is `timestamp_invalid`. Raises `AnchorError` when the bucket cannot
    be read, and `AnchorMisconfigured` for one that is not versioned with Object Lock: what such a bucket
    holds could have been replaced."""
    await anchor.check()
    prefix = origin_prefix.rstrip("/") + "/"
    reading = AnchorReading(anchor.describe(), every=every, log_origin=origin_prefix.rstrip("/"))
    if trust is not None:
        reading.timestamps = "; ".join(root.subject.rfc4514_string() for root in trust.roots)
    keys = list(verifiers.values())
    expected_origins = [prefix + name for name in expected]
    for origin, listing in (await anchor.listings(expected_origins)).items():
        instance = origin.removeprefix(prefix)
        if not origin.startswith(prefix) or not instance:
            reading.ignored.append(origin)
            continue
        verifiers_of = [Verifier(origin, key) for key in keys]
        reading.findings += [
            Finding("anchor_invalid", instance, None, f"{key}: an object no publisher writes under {origin!r}")
            for key in listing.strays
        ]
        read = await _read(anchor, listing, verifiers_of, every)
        # Signatures and tokens are CPU work: off the event loop.
        await asyncio.to_thread(_examine, reading, instance, origin, listing.checkpoints, read, verifiers_of, trust)
    reading.findings.sort(key=lambda f: (f.instance, *f.key()))
    return reading


async def _read(
    anchor: ObjectLockAnchor, listing: AnchorListing, verifiers: list[Verifier], every: bool
) -> dict[int, AnchoredCheckpoint]:
    """The notes (and tokens) to open, by size: all with `every`; else the newest validly signed one and
    everything newer, and every checkpoint with a history."""
    wanted = listing.checkpoints if every else [c for c in listing.checkpoints if c.rewritten]
    read = {c.size: c for c in await anchor.read(wanted)}
    if not every:
        for checkpoint in reversed(listing.checkpoints):
            if checkpoint.size not in read:
                read[checkpoint.size] = (await anchor.read([checkpoint]))[0]
            if isinstance(_open(read[checkpoint.size], verifiers), Checkpoint):
                break
    return read


def _open(checkpoint: AnchoredCheckpoint, verifiers: list[Verifier]) -> Checkpoint | str:
    """The checkpoint an anchored note signs, or why it vouches for nothing."""
    try:
        opened = open_checkpoint((checkpoint.note or b"").decode(), verifiers)
    except (NoteError, UnicodeDecodeError) as exc:
        return str(exc)
    if (opened.origin, opened.size, opened.root) != (checkpoint.origin, checkpoint.size, checkpoint.root):
        return f"it names {opened.origin} at size {opened.size} with root {opened.root.hex()}, not its key's"
    return opened


def _examine(
    reading: AnchorReading,
    instance: str,
    origin: str,
    anchored: list[AnchoredCheckpoint],
    read: Mapping[int, AnchoredCheckpoint],
    verifiers: list[Verifier],
    trust: TimestampTrust | None,
) -> None:
    roots = reading.roots.setdefault(instance, {})
    for checkpoint in anchored:
        size = checkpoint.size
        if checkpoint.rewritten:
            reading.findings.append(Finding("anchor_rewritten", instance, size, _history(checkpoint)))
        stamped_at = None
        full = read.get(size)
        if full is not None:
            opened = _open(full, verifiers)
            if not isinstance(opened, Checkpoint):
                reading.findings.append(
                    Finding(
                        "anchor_invalid",
                        instance,
                        size,
                        f"the note anchored for {origin} at size {size} ({checkpoint.key}) is not a checkpoint "
                        f"of it signed by a trusted key ({opened}); it vouches for nothing",
                    )
                )
                continue
            reading.signed += 1
            if trust is not None and full.token is not None and full.note is not None:
                try:
                    stamped_at = verify_token(full.note, full.token, trust)
                    reading.stamped += 1
                except TimestampError as exc:
                    reading.findings.append(
                        Finding(
                            "timestamp_invalid",
                            instance,
                            size,
                            f"the RFC 3161 token anchored beside this checkpoint does not verify for it: {exc}",
                        )
                    )
        roots[size] = checkpoint.root
        reading.anchored += 1
        newest = reading.heads.get(instance)
        if newest is None or size > newest.size:
            reading.heads[instance] = AnchoredHead(size, stamped_at)
    if not roots:
        del reading.roots[instance]


def _history(checkpoint: AnchoredCheckpoint) -> str:
    what = []
    if checkpoint.versions > 1 or checkpoint.token_versions > 1 or checkpoint.delete_markers:
        what.append(
            f"{checkpoint.versions} version(s) of the anchored checkpoint, {checkpoint.token_versions} of its "
            f"token and {checkpoint.delete_markers} delete marker(s)"
        )
    if checkpoint.others:
        others = checkpoint.others
        what.append(f"{len(others)} later key(s) for the same size with another root ({others[0]})")
    return (
        "; ".join(what) + ": someone holding the bucket's credentials wrote over it after it was anchored; the "
        "first version of the first key, which Object Lock keeps, is the one used"
    )


def timestamp_trust(settings: Settings) -> TimestampTrust | None:
    """The TSA roots `audit.timestamp.certificates` names, or None; `ValueError` names the setting."""
    stamps = settings.audit.timestamp
    if stamps is None:
        return None
    try:
        return TimestampTrust.from_pem(*(settings.resolve_path(path) for path in stamps.certificates))
    except (OSError, ValueError) as exc:
        raise ValueError(f"audit.timestamp.certificates: {exc}") from None


async def read_configured(
    settings: Settings,
    verifiers: Mapping[str, Ed25519PublicKey],
    expected: Iterable[str] = (),
    log_origin: str | None = None,
) -> AnchorReading | None:
    """`read_anchors` on `audit.anchor` (tokens checked against `audit.timestamp`) under `log_origin`
    (default `audit.log_origin`), the `expected` chains listed directly, or None when no anchor is
    configured. Raises `AnchorError` (the bucket) or `ValueError` (the TSA certificates)."""
    if settings.audit.anchor is None:
        return None
    trust = timestamp_trust(settings)
    anchor = ObjectLockAnchor.from_settings(settings.audit.anchor)
    try:
        origin = log_origin or settings.audit.log_origin
        reading = await read_anchors(anchor, verifiers, origin, trust, expected=expected)
        reading.anchored_before = time.time() - settings.audit.anchor_lag_max
        return reading
    finally:
        anchor.close()

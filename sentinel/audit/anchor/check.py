"""Reading the anchors back: the Merkle roots each chain must give, and what is wrong in the bucket itself.

`read_anchors` opens every checkpoint anchored under `<audit.log_origin>/` with the trusted signing keys
and checks its RFC 3161 token; `verify(..., anchored=reading.roots)` then recomputes each chain's tree
against those roots (`anchor_mismatch`, `truncated`). See docs/anchors.md, "Verifying against the anchors".
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sentinel.audit.anchor.s3 import AnchoredCheckpoint, ObjectLockAnchor
from sentinel.audit.anchor.tsa import TimestampError, TimestampTrust, verify_token
from sentinel.audit.note import NoteError, Verifier, open_checkpoint
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
    """What the anchors vouch for. `roots` (instance -> tree size -> root) holds only validly signed
    notes, each key's oldest version: the one Object Lock keeps."""

    where: str
    roots: dict[str, dict[int, bytes]] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    anchored: int = 0
    """Validly signed anchored checkpoints: those in `roots`."""
    stamped: int = 0
    """Of those, the ones whose token verified (0 when `timestamps` is None)."""
    timestamps: str | None = None
    """Whom the tokens were verified against (the TSA roots' subjects); None: tokens not checked."""
    heads: dict[str, AnchoredHead] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    """Origins in the bucket under another prefix than this deployment's `audit.log_origin`."""

    def statement(self) -> str:
        """What was verified against, for reports, drills and `sentinel audit verify`."""
        text = f"verified against {self.anchored} checkpoints anchored in {self.where} (Object Lock, COMPLIANCE)"
        if self.timestamps is None:
            return text + ", their time-stamp tokens not checked (no audit.timestamp configured)"
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
) -> AnchorReading:
    """Every checkpoint anchored for this deployment's chains, checked.

    `verifiers` are the trusted signing keys (kid -> public key; pinned ones where there are pins): a note
    that none of them signed for its origin is `anchor_invalid` and gives no root. A key written over or
    deleted after it was anchored is `anchor_rewritten` (its first version is still the one used). With
    `trust`, a token that does not verify for its note is `timestamp_invalid`. Raises `AnchorError` when
    the bucket cannot be read, and `AnchorMisconfigured` for one that is not versioned with Object Lock:
    what such a bucket holds could have been replaced."""
    await anchor.check()
    prefix = origin_prefix.rstrip("/") + "/"
    reading = AnchorReading(anchor.describe())
    if trust is not None:
        reading.timestamps = "; ".join(root.subject.rfc4514_string() for root in trust.roots)
    keys = list(verifiers.values())
    for origin in await anchor.origins():
        instance = origin.removeprefix(prefix)
        if not origin.startswith(prefix) or not instance:
            reading.ignored.append(origin)
            continue
        try:
            anchored = await anchor.checkpoints(origin)
        except ValueError as exc:  # keys no publisher writes (the origin cannot name a log)
            reading.findings.append(Finding("anchor_invalid", instance, None, f"objects under {origin!r}: {exc}"))
            continue
        # Signatures and tokens are CPU work: off the event loop.
        await asyncio.to_thread(_examine, reading, instance, origin, anchored, keys, trust)
    reading.findings.sort(key=lambda f: (f.instance, *f.key()))
    return reading


def _examine(
    reading: AnchorReading,
    instance: str,
    origin: str,
    anchored: list[AnchoredCheckpoint],
    keys: list[Ed25519PublicKey],
    trust: TimestampTrust | None,
) -> None:
    verifiers = [Verifier(origin, key) for key in keys]
    roots = reading.roots.setdefault(instance, {})
    for checkpoint in anchored:
        size = checkpoint.size
        if checkpoint.rewritten:
            reading.findings.append(
                Finding(
                    "anchor_rewritten",
                    instance,
                    size,
                    f"{checkpoint.versions} version(s) of the anchored checkpoint, {checkpoint.token_versions} of its "
                    f"token and {checkpoint.delete_markers} delete marker(s): someone holding the bucket's "
                    "credentials wrote over it after it was anchored; the first version, which Object Lock keeps, "
                    "is the one used",
                )
            )
        try:
            opened = open_checkpoint(checkpoint.note.decode(), verifiers)
            if opened.origin != origin or opened.size != size:
                raise NoteError(f"it names {opened.origin} at size {opened.size}")
        except (NoteError, UnicodeDecodeError) as exc:
            reading.findings.append(
                Finding(
                    "anchor_invalid",
                    instance,
                    size,
                    f"the note anchored for {origin} at size {size} is not a checkpoint of it signed by a trusted "
                    f"key ({exc}); it vouches for nothing",
                )
            )
            continue
        roots[size] = opened.root
        reading.anchored += 1
        stamped_at = None
        if trust is not None and checkpoint.token is not None:
            try:
                stamped_at = verify_token(checkpoint.note, checkpoint.token, trust)
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
        newest = reading.heads.get(instance)
        if newest is None or size > newest.size:
            reading.heads[instance] = AnchoredHead(size, stamped_at)
    if not roots:
        del reading.roots[instance]


def timestamp_trust(settings: Settings) -> TimestampTrust | None:
    """The TSA roots `audit.timestamp.certificates` names, or None; `ValueError` names the setting."""
    stamps = settings.audit.timestamp
    if stamps is None:
        return None
    try:
        return TimestampTrust.from_pem(*(settings.resolve_path(path) for path in stamps.certificates))
    except (OSError, ValueError) as exc:
        raise ValueError(f"audit.timestamp.certificates: {exc}") from None


async def read_configured(settings: Settings, verifiers: Mapping[str, Ed25519PublicKey]) -> AnchorReading | None:
    """`read_anchors` on `audit.anchor` (tokens checked against `audit.timestamp`), or None when no anchor
    is configured. Raises `AnchorError` (the bucket) or `ValueError` (the TSA certificates)."""
    if settings.audit.anchor is None:
        return None
    trust = timestamp_trust(settings)
    anchor = ObjectLockAnchor.from_settings(settings.audit.anchor)
    try:
        return await read_anchors(anchor, verifiers, settings.audit.log_origin, trust)
    finally:
        anchor.close()

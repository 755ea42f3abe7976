"""What a report is built from (`ReportInputs`) and how its progress is shown (`Stages`)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sentinel.audit.anchor.check import AnchorReading
from sentinel.audit.keyring import WrappedKey
from sentinel.audit.pins import TrustedKeys
from sentinel.audit.spool import WriterCopy
from sentinel.audit.store import AuditStore
from sentinel.audit.verify import PublicKeys
from sentinel.config import Settings
from sentinel.report.model import Period

ACCESS_EVENTS = ("content_access", "content_export")
ReasonReader = Callable[[list[dict[str, Any]]], Awaitable[dict[str, str]]]
"""Given access event documents, their stated reasons by doc id (decrypting them is itself an access)."""


class Stages(Protocol):
    """Progress of a report being built (the CLI draws it): a stage begins, advances, ends."""

    def begin(self, name: str, total: int | None = None) -> None: ...

    def advance(self, amount: int) -> None: ...

    def end(self) -> None: ...


class NoStages:
    def begin(self, name: str, total: int | None = None) -> None:
        pass

    def advance(self, amount: int) -> None:
        pass

    def end(self) -> None:
        pass


@dataclass
class ReportInputs:
    settings: Settings
    store: AuditStore
    """Read for chain verification, which counts the report's numbers on the way."""
    period: Period
    public_keys: PublicKeys
    keys: list[WrappedKey]
    generated_by: str
    reasons: ReasonReader | None = None
    report_id: str = field(default_factory=lambda: f"rpt-{uuid.uuid4()}")
    stages: Stages = field(default_factory=NoStages)
    writers: Sequence[WriterCopy] = ()
    """This data directory's spools: they vouch for records after the last checkpoint."""
    trusted: TrustedKeys | None = None
    """Where `public_keys` come from (pinned, or the store's own) and what the store's keys say against
    the pins; the integrity section states it. None: not known (the keys are treated as not pinned)."""
    anchors: AnchorReading | None = None
    """The checkpoints anchored in `audit.anchor`, read with the trusted keys; None: no anchor configured,
    or (with `anchors_unread`) it could not be read."""
    anchors_unread: str | None = None
    """Why the configured anchors could not be read."""

"""`issue_report`: gather, render, sign and record one report through an `AuditService` (the CLI's own
chain, or the server's), and `open_reader` for the store in use.

The order is what makes the trail trustworthy: an access to stated reasons is recorded before they
are decrypted, and the `report_issued` event (hash, signature, key id) is durable before the report
is handed out.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sentinel.audit.anchor.check import AnchorReading, read_configured
from sentinel.audit.anchor.s3 import AnchorError
from sentinel.audit.keyring import WrappedKey
from sentinel.audit.pins import Pins, configured_pins, trusted_keys
from sentinel.audit.record import Event, decrypt
from sentinel.audit.service import AuditService, local_writers
from sentinel.audit.store import AuditStore
from sentinel.audit.store.embedded import EmbeddedStore
from sentinel.periods import iso
from sentinel.report import pades
from sentinel.report.gather import NoStages, ReportInputs, Stages, gather
from sentinel.report.model import Period
from sentinel.report.render import MEDIA_TYPES, Format, render
from sentinel.report.signing import REPORT_ISSUED, Issued, sha256_hex, sign

T = TypeVar("T")
READ_CACHE_KIB = 64 * 1024


async def _on(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, T]) -> T:
    """Await `coroutine` on `loop` (the service's) from whichever loop is running."""
    if asyncio.get_running_loop() is loop:
        return await coroutine
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, loop))


def public_keys(keys: list[WrappedKey]) -> Any:
    """kid -> Ed25519 public key, from the store's key table (public halves are stored in clear)."""
    table = {k.kid: k for k in keys if k.public}

    def lookup(kid: str) -> Ed25519PublicKey | None:
        key = table.get(kid)
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(key.public)) if key and key.public else None

    return lookup


@contextlib.asynccontextmanager
async def open_reader(store: AuditStore) -> AsyncIterator[AuditStore]:
    """The store a report reads: for the embedded store a new read-only connection (with its own
    thread) opened on the running loop; Elasticsearch as it is."""
    if isinstance(store, EmbeddedStore):
        reader = EmbeddedStore(store.path, read_only=True)
        await reader.open()
        try:
            # SQLite's default 2 MB page cache cannot hold the interior pages of a store of millions of
            # records, so every row lookup would re-read them; 64 MB can (measured: 3x faster at 1M records).
            await reader.execute(f"PRAGMA cache_size = -{READ_CACHE_KIB}")
            yield reader
        finally:
            await reader.close()
        return
    yield store


async def issue_report(
    service: AuditService,
    period: Period,
    fmt: Format,
    *,
    actor: str,
    include_reasons: bool,
    stages: Stages | None = None,
    pins: Pins | None = None,
) -> Issued:
    """Build, render, sign and record a report in one format (see `issue_reports`)."""
    _, (issued,) = await issue_reports(
        service, period, (fmt,), actor=actor, include_reasons=include_reasons, stages=stages, pins=pins
    )
    return issued


async def issue_reports(
    service: AuditService,
    period: Period,
    formats: Sequence[Format],
    *,
    actor: str,
    include_reasons: bool,
    stages: Stages | None = None,
    pins: Pins | None = None,
) -> tuple[dict[str, Any], list[Issued]]:
    """Build a report once, render it in each of `formats`, sign and record each rendering (one
    `report_issued` event per file, all with the report's id); the gathered report and the files.
    Raises `JournalUnavailable` if the trail cannot record them.

    Checkpoints are verified against `pins`, else those `audit.pinned_keys` names (`PinFileError` if that
    is no pin file), else the store's own signing keys, which the report then says it trusted unpinned;
    and against the checkpoints anchored in `audit.anchor` when it is configured (one that cannot be read
    is a finding of the report, not its failure)."""
    stages = stages or NoStages()
    reader = await service.reader()
    keyring = reader.keyring
    if keyring is None:
        raise RuntimeError(f"the audit trail is unavailable: {service.error}")
    keys = await service.store.keys()
    keyring.learn(keys)
    trusted = await trusted_keys(service.store, pins if pins is not None else configured_pins(service.settings))
    anchors: AnchorReading | None = None
    anchors_unread = None
    try:
        anchors = await read_configured(
            service.settings,
            trusted.keys,
            expected=await service.store.instances(),
            log_origin=trusted.log_origin(service.settings.audit.log_origin),
        )
    except (AnchorError, ValueError) as exc:
        anchors_unread = str(exc)

    main = asyncio.get_running_loop()

    async def reasons(events: list[dict[str, Any]]) -> dict[str, str]:
        # Recorded by the service on its own loop, and durable before anything is decrypted.
        await _on(
            main,
            service.record_event(
                Event(
                    "content_access",
                    actor,
                    {
                        "purpose": "compliance report",
                        "report": inputs.report_id,
                        "fields": ["reason"],
                        "records": [e["doc_id"] for e in events[:100]],
                        "count": len(events),
                    },
                    reason=f"stated reasons of content accesses for compliance report {inputs.report_id} "
                    f"({iso(period.since)} to {iso(period.until)})",
                )
            ),
        )
        out = {}
        for doc in events:
            if "reason" in (doc.get("encrypted") or {}):
                out[doc["doc_id"]] = str(decrypt(keyring, doc).get("reason"))
        return out

    inputs = ReportInputs(
        settings=service.settings,
        store=service.store,
        period=period,
        public_keys=trusted,
        trusted=trusted,
        anchors=anchors,
        anchors_unread=anchors_unread,
        keys=keyring.all_keys(),
        generated_by=actor,
        reasons=reasons if include_reasons else None,
        stages=stages,
        writers=local_writers(service.settings, service.instance.removesuffix(".cli")),
    )

    async def build() -> dict[str, Any]:
        async with open_reader(service.store) as reader:
            inputs.store = reader
            return await gather(inputs)

    if isinstance(service.store, EmbeddedStore):
        # Gathering is long and mostly Python; on its own thread and loop it never holds up the proxy's loop
        # for more than the interpreter's switch interval.
        report = await asyncio.to_thread(asyncio.run, build())
    else:
        report = await build()
    kid, key = keyring.signing_key()
    issued = []
    for fmt in formats:
        stages.begin(f"rendering {fmt}")
        body = await asyncio.to_thread(render, report, fmt)
        if fmt == "pdf" and isinstance(key, Ed25519PrivateKey):
            # Signed inside too (PAdES), the way PDF readers check; the detached signature covers these bytes.
            # A key in a PKCS#11 token (audit.signer) signs the detached signature only (docs/report.md).
            body = await asyncio.to_thread(pades.sign_pdf, body, kid, key, report)
        stages.end()
        sha = sha256_hex(body)
        signature = sign(sha, key)
        await service.record_event(
            Event(
                REPORT_ISSUED,
                actor,
                {
                    "report_id": inputs.report_id,
                    "sha256": sha,
                    "signature": signature,
                    "kid": kid,
                    "format": fmt,
                    "from": iso(period.since),
                    "to": iso(period.until),
                    "findings": report["summary"]["findings"],
                },
            )
        )
        issued.append(Issued(inputs.report_id, fmt, MEDIA_TYPES[fmt], body, sha, signature, kid))
    return report, issued

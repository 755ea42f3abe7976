"""Admin API for compliance reports (auditor role only): issue a signed report for a period, and check one.

`GET /report?from=&to=&format=` answers the report itself, with its id, SHA-256, signature and key id
in `X-Sentinel-Report-*` headers; the `report_issued` event is durable before the first byte is sent.
`POST /report/verify` takes a report file as the request body and says whether Sentinel issued it.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response

from sentinel.admin.auth import AdminAuth, Principal
from sentinel.audit.service import AuditService
from sentinel.audit.store import StoreUnavailable
from sentinel.periods import parse_time
from sentinel.proxy.hooks import JournalUnavailable
from sentinel.report.model import Period
from sentinel.report.render import EXTENSIONS, FORMATS, Format

MAX_VERIFY_BYTES = 256 * 1024 * 1024


def _period(since: str, until: str | None) -> Period:
    try:
        end = parse_time(until) if until else parse_time("0s")
        return Period(parse_time(since, now=end), end)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None


def report_router(service: AuditService, auth: AdminAuth) -> APIRouter:
    router = APIRouter(prefix="/report", tags=["report"])
    auditor = Depends(auth.require("auditor"))

    @router.get("")
    async def issue(
        principal: Principal = auditor,
        since: Annotated[str, Query(alias="from", description="ISO 8601, Unix seconds, or 30d before `to`")] = "30d",
        until: Annotated[str | None, Query(alias="to", description="ISO 8601 or Unix seconds; default now")] = None,
        format: Annotated[str, Query(pattern="^(html|pdf|json|md|oscal)$")] = "html",
        reasons: bool = True,
    ) -> Response:
        """A signed compliance report for the period, recorded in the audit trail as `report_issued`."""
        from sentinel.audit.pins import PinFileError
        from sentinel.report.issue import issue_report

        period = _period(since, until)
        fmt: Format = next(f for f in FORMATS if f == format)
        try:
            issued = await issue_report(
                service, period, fmt, actor=f"admin-api:{principal.name}", include_reasons=reasons
            )
        except JournalUnavailable as exc:
            raise HTTPException(
                503, f"the report could not be recorded in the audit trail, so none is issued: {exc}"
            ) from None
        except StoreUnavailable as exc:
            raise HTTPException(503, str(exc)) from None
        except PinFileError as exc:  # the deployment's audit.pinned_keys: no report rather than an unpinned one
            raise HTTPException(500, f"no report issued: {exc}") from None
        name = f"sentinel-report-{issued.report_id}.{EXTENSIONS[fmt]}"
        return Response(
            issued.body,
            media_type=issued.media_type,
            headers={
                "Content-Disposition": f'attachment; filename="{name}"',
                "X-Sentinel-Report-Id": issued.report_id,
                "X-Sentinel-Report-Sha256": issued.sha256,
                "X-Sentinel-Report-Signature": issued.signature,
                "X-Sentinel-Report-Key": issued.kid,
            },
        )

    @router.post("/verify")
    async def verify(request: Request, principal: Principal = auditor) -> dict[str, Any]:
        """Whether the request body is a report Sentinel issued, unmodified (signed by a pinned key when
        `audit.pinned_keys` names them)."""
        from sentinel.audit.pins import PinFileError, configured_pins, trusted_keys
        from sentinel.audit.service import local_writers
        from sentinel.report.signing import verify_report

        body = await request.body()
        if len(body) > MAX_VERIFY_BYTES:
            raise HTTPException(413, "report too large")
        try:
            trusted = await trusted_keys(service.store, configured_pins(service.settings))
            # The writer's spool too: a report just issued is durable there before the shipper moves it.
            writers = local_writers(service.settings, service.instance.removesuffix(".cli"))
            verdict = await verify_report(service.store, trusted, body, writers=writers)
        except StoreUnavailable as exc:
            raise HTTPException(503, str(exc)) from None
        except PinFileError as exc:
            raise HTTPException(500, f"cannot verify: {exc}") from None
        return verdict.to_dict()

    return router

"""Admin API over the audit trail: search metadata, show (and, for auditors, decrypt) a record, verify.

Decrypting requires the `auditor` role and a stated reason, and the access is written to the
audit trail before any content is returned.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request

from sentinel.admin.auth import AdminAuth, Principal
from sentinel.audit.kek import KeyUnavailable
from sentinel.audit.record import RecordCorrupt
from sentinel.audit.service import AuditService
from sentinel.audit.store import SearchQuery, StoreUnavailable
from sentinel.periods import parse_time
from sentinel.proxy.hooks import JournalUnavailable


def _time(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None


def audit_router(service: AuditService, auth: AdminAuth) -> APIRouter:
    router = APIRouter(prefix="/audit", tags=["audit"])
    anyone = Depends(auth.require("auditor", "operator"))

    @router.get("/records")
    async def search(
        since: str | None = None,
        until: str | None = None,
        model: str | None = None,
        operation: str | None = None,
        outcome: str | None = None,
        status: int | None = None,
        user: Annotated[str | None, Query(description="A Dify end-user id; matched by blind index")] = None,
        api_key_id: str | None = None,
        kind: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        principal: Principal = anyone,
    ) -> dict[str, Any]:
        """Audit record metadata (never content), newest first."""
        query = SearchQuery(
            since=_time(since),
            until=_time(until),
            model=model,
            operation=operation,
            outcome=outcome,
            status=status,
            api_key_id=api_key_id,
            kind=kind,
            limit=limit,
        )
        try:
            return {"records": await service.search(query, user=user)}
        except (StoreUnavailable, KeyUnavailable) as exc:
            raise HTTPException(503, str(exc)) from None

    @router.get("/records/{record_id}")
    async def show(
        record_id: str,
        request: Request,
        decrypt: bool = False,
        reason: str | None = None,
        principal: Principal = anyone,
    ) -> dict[str, Any]:
        """One record's metadata; with `decrypt=true` (auditors, with a `reason`) its content too."""
        if decrypt and principal.role != "auditor":
            raise await auth.refuse(request, principal, "only auditors may decrypt audit content")
        try:
            return await service.show(
                record_id, decrypt_content=decrypt, actor=f"admin-api:{principal.name}", reason=reason
            )
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from None
        except PermissionError as exc:
            raise HTTPException(422, str(exc)) from None
        except JournalUnavailable as exc:
            raise HTTPException(503, f"the access could not be recorded, so no content is shown: {exc}") from None
        except (KeyUnavailable, RecordCorrupt) as exc:
            raise HTTPException(500, str(exc)) from None
        except StoreUnavailable as exc:
            raise HTTPException(503, str(exc)) from None

    @router.get("/verify")
    async def verify(
        since: str | None = None, until: str | None = None, principal: Principal = anyone
    ) -> dict[str, Any]:
        """Recompute the hash chains against their signed checkpoints (and the pinned keys, when
        `audit.pinned_keys` names them: then a stored signing key they do not pin is a finding)."""
        from sentinel.audit.pins import PinFileError, configured_pins, trusted_keys

        try:
            trusted = await trusted_keys(service.store, configured_pins(service.settings))
            report = await service.verify(_time(since), _time(until), pinned=dict(trusted.keys))
        except StoreUnavailable as exc:
            raise HTTPException(503, str(exc)) from None
        except PinFileError as exc:
            raise HTTPException(500, f"cannot verify: {exc}") from None
        return report.to_dict() | {"ok": report.ok and not trusted.findings, "keys": trusted.to_dict()}

    return router

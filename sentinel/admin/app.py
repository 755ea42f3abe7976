"""`create_admin_app`: the FastAPI app served on the admin port (never on the proxy port)."""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from sentinel import __version__
from sentinel.admin.logins import THROTTLED
from sentinel.telemetry.metrics import ReadAtScrape

log = logging.getLogger("sentinel.admin")


@dataclass
class AdminState:
    """What the admin endpoints read: the registry to expose and the checks behind `/readyz`."""

    registry: CollectorRegistry
    ready_checks: dict[str, Any] = field(default_factory=dict)
    """name -> callable returning (ok: bool, detail: str) or (ok, detail, code): `code` is the short
    reason an unauthenticated caller sees (`failing` when not given); `detail` (which may name hosts
    and paths) goes to the log when a check changes and to callers holding a token."""
    audit: Any = None
    """The AuditService, when the audit trail is on."""
    moderation: Any = None
    """A `sentinel.policy.ModerationEndpoint` when a moderation token is configured."""
    auth: Any = None
    """The `AdminAuth` guarding the audit (and report) endpoints."""
    metrics_token: str | None = None
    """When set, /metrics and the API docs need it (or an admin token) as a bearer token."""

    _last_ok: dict[str, bool] = field(default_factory=dict)

    def readiness(self) -> tuple[bool, dict[str, dict[str, Any]]]:
        """Every check's ok, detail and code; ready when all are ok. A check that raises is not ok."""
        results: dict[str, dict[str, Any]] = {}
        for name, check in self.ready_checks.items():
            try:
                ok, detail, *code = check()
            except Exception as exc:
                ok, detail, code = False, f"check failed: {type(exc).__name__}: {exc}", ["check_failed"]
            ok = bool(ok)
            results[name] = {"ok": ok, "detail": detail, "code": code[0] if code else ("ok" if ok else "failing")}
            if self._last_ok.get(name, True) != ok:
                log.log(logging.INFO if ok else logging.WARNING, "readiness check %s: %s", name, detail)
            self._last_ok[name] = ok
        return all(r["ok"] for r in results.values()), results

    def may_see_details(self, authorization: str | None) -> bool:
        """Whether a `/readyz` caller may read the details: it holds the metrics token or an admin token."""
        if not authorization or not authorization.lower().startswith("bearer "):
            return False
        supplied = authorization[7:].strip().encode()
        if self.metrics_token is not None and hmac.compare_digest(supplied, self.metrics_token.encode()):
            return True
        return self.auth is not None and self.auth.identify(authorization) is not None

    def register_gauges(self, gauges: ReadAtScrape) -> None:
        gauges.gauge(
            "sentinel_ready",
            "1 when /readyz answers 200: every readiness check passes; see sentinel_ready_check.",
            [],
            lambda: [((), float(self.readiness()[0]))],
        )
        gauges.gauge(
            "sentinel_ready_check",
            "Each readiness check (upstream, audit, policy): 1 passing, 0 failing; /readyz says why.",
            ["check"],
            lambda: [((name,), float(r["ok"])) for name, r in self.readiness()[1].items()],
        )


def create_admin_app(state: AdminState) -> FastAPI:
    app = FastAPI(title="Sentinel admin API", version=__version__, docs_url="/docs", redoc_url=None)
    app.state.sentinel = state

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(state.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        """Liveness: the process is up and serving."""
        return {"status": "ok", "version": __version__}

    @app.get("/readyz")
    def readyz(request: Request) -> JSONResponse:
        """Readiness: the instance can serve calls as configured (upstream reachable, the audit trail
        able to record in strict mode, ...); `reason` says why not: short codes for anyone, the
        details (hosts, paths, sizes) with the metrics token or an admin token."""
        ready, results = state.readiness()
        if state.may_see_details(request.headers.get("authorization")):
            checks = results
            why = {name: r["detail"] for name, r in results.items()}
        else:
            checks = {name: {"ok": r["ok"], "code": r["code"]} for name, r in results.items()}
            why = {name: r["code"] for name, r in results.items()}
        body: dict[str, Any] = {"ready": ready, "checks": checks}
        if not ready:
            body["reason"] = "; ".join(f"{name}: {why[name]}" for name, r in results.items() if not r["ok"])
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.post("/dify/moderation")
    async def dify_moderation(request: Request) -> JSONResponse:
        """Dify "API-based extension" for moderation (`ping`, `app.moderation.input`, `app.moderation.output`),
        answered with the policy in force; Dify sends the configured API key as a bearer token."""
        moderation = state.moderation
        if moderation is None:
            return JSONResponse({"error": "moderation endpoint is off: set SENTINEL_POLICY_MODERATION_TOKEN"}, 404)
        # The token first, counted like any failed admin login; only then the body, bounded.
        header = request.headers.get("authorization")
        client = request.client.host if request.client else None
        auth = state.auth
        if not moderation.authorized(header):
            wait = auth.logins.retry_after(client) if auth is not None else None
            if wait is not None:  # past logins.limit: a wrong token gets 429, the right one still works
                auth.failed(THROTTLED, MODERATION_PATH, client)
                retry = {"Retry-After": f"{wait:.0f}"}
                return JSONResponse({"error": "too many failed logins from this address; try again later"}, 429, retry)
            if auth is not None:
                auth.failed("missing" if not header else "invalid", MODERATION_PATH, client)
            return JSONResponse({"error": "invalid or missing bearer token"}, 401, {"WWW-Authenticate": "Bearer"})
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MODERATION_MAX_BODY:
            return _too_large()
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MODERATION_MAX_BODY:
                return _too_large()
        status, answer = moderation.moderate(bytes(body))
        return JSONResponse(answer, status_code=status)

    if state.audit is not None:
        from sentinel.admin.tlog_routes import tlog_router

        app.include_router(tlog_router(state.audit.instance, state.audit.spool.path))
    if state.audit is not None and state.auth is not None:
        from sentinel.admin.audit_routes import audit_router

        app.include_router(audit_router(state.audit, state.auth))
        from sentinel.admin.report_routes import report_router

        app.include_router(report_router(state.audit, state.auth))
    if state.metrics_token is not None:
        if state.auth is None:
            raise ValueError("protecting /metrics needs the AdminAuth that counts and records failures")
        from sentinel.admin.protect import ProtectedPaths

        app.add_middleware(ProtectedPaths, token=state.metrics_token, auth=state.auth)
    return app


MODERATION_PATH = "/dify/moderation"
MODERATION_MAX_BODY = 1024 * 1024
"""Dify sends a query and its inputs; a megabyte is far above any real call."""


def _too_large() -> JSONResponse:
    # The rest of the body, if it comes, is read and dropped under the connection's own deadlines
    # (bytes after an answer earn no time), so the client reads this answer instead of a reset.
    return JSONResponse({"error": f"body over {MODERATION_MAX_BODY} bytes"}, 413)

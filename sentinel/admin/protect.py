"""Bearer protection for the admin port's open endpoints (`/metrics`, `/docs`, `/openapi.json`), off
unless `metrics.token` is set: for an admin port reachable beyond localhost.

A plain ASGI middleware (no `BaseHTTPMiddleware` hop). It accepts the metrics token (what Prometheus
sends: `authorization: {type: Bearer, credentials_file: ...}` in its scrape config) or any admin API
token; failures are counted, rate limited and recorded like any failed admin login.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from sentinel.admin.auth import AdminAuth, hash_token
from sentinel.admin.logins import THROTTLED

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]

PROTECTED = frozenset({"/metrics", "/docs", "/docs/oauth2-redirect", "/openapi.json"})


class ProtectedPaths:
    def __init__(self, app: ASGIApp, *, token: str, auth: AdminAuth) -> None:
        self.app = app
        self._digest = hash_token(token)
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] not in PROTECTED or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        client = scope["client"][0] if scope.get("client") else None
        header = _authorization(scope)
        if self.auth.logins.retry_after(client) is not None:
            status, reason = 429, THROTTLED
        else:
            status, reason = 401, "missing" if header is None else "invalid"
        self.auth.failed(reason, scope["path"], client)
        body = b'{"detail":"a valid bearer token is required (metrics.token or an admin API token)"}'
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if status == 401:
            headers.append((b"www-authenticate", b"Bearer"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _allowed(self, scope: Scope) -> bool:
        header = _authorization(scope)
        if header is None or not header.lower().startswith("bearer "):
            return False
        if hmac.compare_digest(hash_token(header[7:].strip()), self._digest):
            return True
        return self.auth.identify(header) is not None


def _authorization(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            return str(value.decode("latin-1"))
    return None

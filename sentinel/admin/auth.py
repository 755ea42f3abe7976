"""Who may call the admin API: bearer tokens with roles, kept hashed in a file.

Roles:
- `auditor`: read audit metadata, decrypt content (stating a reason; the access is itself
  recorded), verify the chain, pull compliance reports;
- `operator`: read audit metadata and verify the chain (no content).

The tokens file (`SENTINEL_ADMIN_TOKENS_FILE`) holds only SHA-256 digests of the tokens:

    tokens:
      - name: alice
        role: auditor
        sha256: 9f86d08188...

`sentinel admin token --name alice --role auditor` makes a token and prints its line. Every
failed attempt is counted; the audit trail gets one record per client per window with the count
(`sentinel/admin/logins.py`; reports list them as anomalies), and a client with too many failures
in its window is answered 429 until the window ends.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from fastapi import HTTPException, Request
from prometheus_client import CollectorRegistry, Counter

from sentinel.admin.logins import THROTTLED, FailedLogins, shorten
from sentinel.config import ConfigError

log = logging.getLogger("sentinel.admin")

Role = Literal["auditor", "operator"]
ROLES: tuple[Role, ...] = ("auditor", "operator")


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    role: Role


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "sat_" + secrets.token_urlsafe(32)


def load_tokens(path: Path) -> dict[str, Principal]:
    """digest -> principal; a bad file is a `ConfigError` naming the entry."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"admin_tokens_file {path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"admin_tokens_file {path}: not valid YAML: {exc}") from None
    entries = data.get("tokens") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ConfigError(f"admin_tokens_file {path}: expected a mapping with a `tokens` list")
    tokens: dict[str, Principal] = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ConfigError(f"admin_tokens_file {path}: tokens[{index}] is not a mapping")
        name, role, digest = entry.get("name"), entry.get("role"), str(entry.get("sha256", "")).lower()
        if not isinstance(name, str) or not name:
            raise ConfigError(f"admin_tokens_file {path}: tokens[{index}].name is missing")
        if role not in ROLES:
            raise ConfigError(f"admin_tokens_file {path}: tokens[{index}] ({name}).role must be one of {ROLES}")
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ConfigError(f"admin_tokens_file {path}: tokens[{index}] ({name}).sha256 is not a SHA-256 hex digest")
        tokens[digest] = Principal(name, role)
    return tokens


class AdminAuth:
    def __init__(
        self, tokens: dict[str, Principal], registry: CollectorRegistry, logins: FailedLogins | None = None
    ) -> None:
        self._tokens = tokens
        self.logins = logins or FailedLogins()
        self._failures = Counter(
            "sentinel_admin_auth_failures",
            "Rejected admin API calls, by reason (missing, invalid, forbidden, throttled).",
            ["reason"],
            registry=registry,
        )

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def identify(self, authorization: str | None) -> Principal | None:
        if not authorization or not authorization.lower().startswith("bearer "):
            return None
        digest = hash_token(authorization[7:].strip())
        for known, principal in self._tokens.items():
            if hmac.compare_digest(known, digest):
                return principal
        return None

    def require(self, *roles: Role) -> Callable[[Request], Awaitable[Principal]]:
        """A FastAPI dependency: the caller's principal, or 401/403 (and the failure recorded)."""

        async def dependency(request: Request) -> Principal:
            if not self.enabled:
                raise HTTPException(503, "admin API tokens are not configured (SENTINEL_ADMIN_TOKENS_FILE)")
            client = request.client.host if request.client else None
            header = request.headers.get("authorization")
            principal = self.identify(header)
            if principal is None:
                # Past the limit a wrong token gets 429; a right one still works, so a flood from an
                # address (or a NAT) that auditors share does not lock them out.
                wait = self.logins.retry_after(client)
                if wait is not None:
                    self.failed(THROTTLED, _attempted(request), client)
                    raise HTTPException(
                        429, "too many failed logins from this address; try again later", {"Retry-After": f"{wait:.0f}"}
                    )
                reason = "missing" if not header else "invalid"
                self.failed(reason, _attempted(request), client)
                raise HTTPException(401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"})
            if principal.role not in roles:
                self.failed("forbidden", _attempted(request), client, principal)
                raise HTTPException(403, f"role {principal.role} may not do this")
            return principal

        return dependency

    async def refuse(self, request: Request, principal: Principal, why: str) -> HTTPException:
        """A known caller asked for more than their role allows: record it, return the 403 to raise."""
        self.failed("forbidden", _attempted(request), request.client.host if request.client else None, principal)
        return HTTPException(403, why)

    def failed(self, reason: str, path: str, client: str | None, principal: Principal | None = None) -> None:
        """Count, log (once per client per window) and aggregate one failed login."""
        self._failures.labels(reason).inc()
        path = shorten(path)
        opened = self.logins.failed(reason, path, client)
        who = f"{principal.name} ({principal.role})" if principal else "unknown caller"
        # One line per client per window: a flood of wrong tokens must not flood the log either.
        log.log(
            logging.WARNING if opened else logging.DEBUG,
            "admin API: %s token from %s for %s (%s)",
            reason,
            client,
            path,
            who,
        )


def _attempted(request: Request) -> str:
    """What a failed call asked for: its route's template (`/audit/records/{seq}`) where one
    matched, so an attacker's path cannot grow the record or the log line; else the path, cut."""
    template = getattr(request.scope.get("route"), "path", None)
    return template if isinstance(template, str) else shorten(request.url.path)

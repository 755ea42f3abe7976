"""`provision`: make a Grafana match `desired.py`, through its HTTP API with `grafana-client`.

Idempotent: each object is read first and written only when it differs (or with `force`), so a
second run reports everything `unchanged` and makes no write. Objects are matched by uid, so they
are updated in place, never duplicated. Credentials come from `GrafanaSettings` (env or files)
and never appear in messages.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import niquests
from grafana_client import GrafanaApi
from grafana_client.client import (
    GrafanaClientError,
    GrafanaException,
    GrafanaServerError,
    GrafanaUnauthorizedError,
)

from sentinel.grafana import desired
from sentinel.grafana.settings import GrafanaSettings

log = logging.getLogger("sentinel.grafana")

Action = Literal["created", "updated", "unchanged"]


class ProvisionError(Exception):
    """Grafana could not be set up; the message says why and what to check (never a credential)."""


@dataclass(frozen=True)
class Change:
    kind: str
    uid: str
    action: Action

    def __str__(self) -> str:
        return f"{self.action:9} {self.kind} {self.uid}"


def connect(settings: GrafanaSettings) -> GrafanaApi:
    credential: str | tuple[str, str]
    if settings.token is not None:
        credential = settings.token.get_secret_value()
    elif settings.user and settings.password is not None:
        credential = (settings.user, settings.password.get_secret_value())
    else:
        raise ProvisionError(
            "no Grafana credentials: set SENTINEL_GRAFANA_TOKEN (or _TOKEN_FILE) to a service account token, "
            "or SENTINEL_GRAFANA_USER with SENTINEL_GRAFANA_PASSWORD (or _PASSWORD_FILE)"
        )
    return GrafanaApi.from_url(settings.url, credential=credential, timeout=settings.timeout)


def _missing(call: Callable[[], Any]) -> Any | None:
    """The object, or None when Grafana answers 404."""
    try:
        return call()
    except GrafanaClientError as exc:
        if exc.status_code == 404:
            return None
        raise


def _differs(wanted: dict[str, Any], current: dict[str, Any]) -> bool:
    """Whether any field we manage differs; fields Grafana adds (id, version, ...) are ignored."""
    for key, value in wanted.items():
        if isinstance(value, dict) and isinstance(current.get(key), dict):
            if _differs(value, current[key]):
                return True
        elif current.get(key) != value:
            return True
    return False


class Provisioner:
    def __init__(
        self,
        api: GrafanaApi,
        settings: GrafanaSettings,
        *,
        alert_rules: bool,
        force: bool = False,
        runbook_base: str = "",
    ) -> None:
        self.api = api
        self.settings = settings
        self.alert_rules = alert_rules
        self.force = force
        self.runbook_base = runbook_base

    def run(self) -> list[Change]:
        try:
            changes = [self._datasource(ds) for ds in desired.datasources(self.settings)]
            changes.append(self._folder())
            changes += [self._dashboard(d) for d in desired.dashboards(self.runbook_base)]
            if self.alert_rules:
                rules = desired.alert_rules(self.settings.folder_uid, self.runbook_base)
                changes += [self._alert_rule(rule) for rule in rules]
        except GrafanaUnauthorizedError:
            raise ProvisionError(
                f"Grafana at {self.settings.url} refused the credentials (401): check the token or user and password"
            ) from None
        except GrafanaClientError as exc:
            if exc.status_code == 403:
                raise ProvisionError(
                    f"Grafana at {self.settings.url} denied access (403): the credentials need the Admin role "
                    "(datasources, folders, alert rules)"
                ) from None
            raise ProvisionError(f"Grafana at {self.settings.url} rejected a request: {exc.message}") from None
        except GrafanaServerError as exc:
            raise ProvisionError(f"Grafana at {self.settings.url} failed: {exc.message}") from None
        except (GrafanaException, niquests.exceptions.RequestException) as exc:
            raise ProvisionError(f"cannot reach Grafana at {self.settings.url}: {type(exc).__name__}") from None
        return changes

    def _datasource(self, wanted: desired.Datasource) -> Change:
        api = self.api.datasource
        current = _missing(lambda: api.get_datasource_by_uid(wanted.uid))
        body = {**wanted.body, "secureJsonData": wanted.secure} if wanted.secure else wanted.body
        if current is None:
            api.create_datasource(body)
            return Change("datasource", wanted.uid, "created")
        # Secrets cannot be read back: a missing one is sent, a present one only with `force`.
        secrets_missing = any(not current.get("secureJsonFields", {}).get(key) for key in wanted.secure)
        if self.force or secrets_missing or _differs(wanted.body, current):
            api.update_datasource_by_uid(wanted.uid, body)
            return Change("datasource", wanted.uid, "updated")
        return Change("datasource", wanted.uid, "unchanged")

    def _folder(self) -> Change:
        uid, title = self.settings.folder_uid, self.settings.folder_title
        current = _missing(lambda: self.api.folder.get_folder(uid))
        if current is None:
            self.api.folder.create_folder(title, uid=uid)
            return Change("folder", uid, "created")
        if self.force or current.get("title") != title:
            self.api.folder.update_folder(uid, title=title, overwrite=True)
            return Change("folder", uid, "updated")
        return Change("folder", uid, "unchanged")

    def _dashboard(self, dashboard: dict[str, Any]) -> Change:
        uid = str(dashboard["uid"])
        current = _missing(lambda: self.api.dashboard.get_dashboard(uid))
        if current is not None and not self.force:
            stored = {k: v for k, v in current.get("dashboard", {}).items() if k not in ("id", "version")}
            if stored == dashboard and current.get("meta", {}).get("folderUid") == self.settings.folder_uid:
                return Change("dashboard", uid, "unchanged")
        self.api.dashboard.update_dashboard(
            {
                "dashboard": {**dashboard, "id": None},
                "folderUid": self.settings.folder_uid,
                "overwrite": True,
                "message": "sentinel grafana provision",
            }
        )
        return Change("dashboard", uid, "created" if current is None else "updated")

    def _alert_rule(self, rule: dict[str, Any]) -> Change:
        api = self.api.alertingprovisioning
        uid = str(rule["uid"])
        current = _missing(lambda: api.get_alertrule(uid))
        if current is None:
            api.create_alertrule(rule)
            return Change("alert rule", uid, "created")
        if self.force or _differs({k: v for k, v in rule.items() if k != "orgID"}, current):
            api.update_alertrule(uid, rule)
            return Change("alert rule", uid, "updated")
        return Change("alert rule", uid, "unchanged")


def provision(
    settings: GrafanaSettings, *, alert_rules: bool | None = None, force: bool = False, runbook_base: str = ""
) -> list[Change]:
    """Create or update everything in `desired`; `alert_rules` overrides `settings.alert_rules`."""
    api = connect(settings)
    with_rules = settings.alert_rules if alert_rules is None else alert_rules
    try:
        return Provisioner(api, settings, alert_rules=with_rules, force=force, runbook_base=runbook_base).run()
    finally:
        api.client.s.close()  # grafana-client keeps a pooled session open and has no close() of its own

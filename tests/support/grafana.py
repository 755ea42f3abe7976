"""`FakeGrafana`: a small Grafana HTTP API on a real socket, for provisioning tests.

No Grafana server can run on the test machines. This implements only the endpoints Sentinel's
provisioning calls, shaped from Grafana's HTTP API documentation (data source, folder, dashboard
and alerting provisioning APIs): their paths, methods, status codes (200/201, 400, 401, 403, 404,
409, 412) and the response fields provisioning reads. Secrets sent in `secureJsonData` are kept
apart and only reported as `secureJsonFields`, as Grafana does. Every write is logged in `writes`.
"""

from __future__ import annotations

import base64
import copy
import re
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

ADMIN_TOKEN = "glsa_admin_token_for_tests"
VIEWER_TOKEN = "glsa_viewer_token_for_tests"
ADMIN_USER = ("admin", "correct horse battery staple")


def _message(code: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"message": message, **extra}, status=code)


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


class FakeGrafana:
    def __init__(self) -> None:
        self.url = ""
        self.datasources: dict[str, dict[str, Any]] = {}
        self.secrets: dict[str, dict[str, str]] = {}
        self.folders: dict[str, dict[str, Any]] = {}
        self.dashboards: dict[str, dict[str, Any]] = {}
        self.dashboard_folders: dict[str, str] = {}
        self.rules: dict[str, dict[str, Any]] = {}
        self.writes: list[tuple[str, str]] = []
        self._ids = 0

    def _next_id(self) -> int:
        self._ids += 1
        return self._ids

    @web.middleware
    async def auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        header = request.headers.get("Authorization", "")
        role = None
        if header == f"Bearer {ADMIN_TOKEN}":
            role = "Admin"
        elif header == f"Bearer {VIEWER_TOKEN}":
            role = "Viewer"
        elif header.startswith("Basic "):
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            role = "Admin" if (user, password) == ADMIN_USER else None
        if role is None:
            return _message(401, "Unauthorized")
        if request.method != "GET" and role != "Admin":
            return _message(403, "You'll need additional permissions to perform this action.")
        if request.method != "GET":
            self.writes.append((request.method, request.path))
        response: web.StreamResponse = await handler(request)
        return response

    # Data sources: GET/PUT /api/datasources/uid/:uid, POST /api/datasources
    async def get_datasource(self, request: web.Request) -> web.Response:
        ds = self.datasources.get(request.match_info["uid"])
        return web.json_response(ds) if ds else _message(404, "Data source not found")

    async def create_datasource(self, request: web.Request) -> web.Response:
        body = await request.json()
        if any(ds["name"] == body["name"] for ds in self.datasources.values()):
            return _message(409, "data source with the same name already exists")
        if body.get("uid") in self.datasources:
            return _message(409, "data source with the same uid already exists")
        ds = self._store_datasource(body, {"id": self._next_id(), "orgId": 1, "version": 1, "readOnly": False})
        return web.json_response({"datasource": ds, "id": ds["id"], "message": "Datasource added", "name": ds["name"]})

    async def update_datasource(self, request: web.Request) -> web.Response:
        uid = request.match_info["uid"]
        current = self.datasources.get(uid)
        if current is None:
            return _message(404, "Data source not found")
        body = await request.json()
        kept = {"id": current["id"], "orgId": 1, "version": current["version"] + 1, "readOnly": False}
        ds = self._store_datasource({**body, "uid": uid}, kept)
        return web.json_response(
            {"datasource": ds, "id": ds["id"], "message": "Datasource updated", "name": ds["name"]}
        )

    def _store_datasource(self, body: dict[str, Any], kept: dict[str, Any]) -> dict[str, Any]:
        uid = body.get("uid") or f"ds{self._next_id()}"
        secrets = {**self.secrets.get(uid, {}), **body.pop("secureJsonData", {})}
        self.secrets[uid] = secrets
        ds = {
            "uid": uid,
            "name": body["name"],
            "type": body["type"],
            "access": body.get("access", "proxy"),
            "url": body.get("url", ""),
            "user": body.get("user", ""),
            "database": body.get("database", ""),
            "basicAuth": body.get("basicAuth", False),
            "basicAuthUser": body.get("basicAuthUser", ""),
            "withCredentials": False,
            "isDefault": body.get("isDefault", False),
            "jsonData": body.get("jsonData", {}),
            "secureJsonFields": {key: True for key in secrets},
            **kept,
        }
        self.datasources[uid] = ds
        return ds

    # Folders: GET/PUT /api/folders/:uid, POST /api/folders
    async def get_folder(self, request: web.Request) -> web.Response:
        folder = self.folders.get(request.match_info["uid"])
        return web.json_response(folder) if folder else _message(404, "folder not found", status="not-found")

    async def create_folder(self, request: web.Request) -> web.Response:
        body = await request.json()
        uid = body.get("uid") or f"f{self._next_id()}"
        if uid in self.folders:
            return _message(409, "a folder with the same uid already exists")
        self.folders[uid] = self._folder(uid, body["title"], self._next_id(), 1)
        return web.json_response(self.folders[uid])

    async def update_folder(self, request: web.Request) -> web.Response:
        uid = request.match_info["uid"]
        current = self.folders.get(uid)
        if current is None:
            return _message(404, "folder not found", status="not-found")
        body = await request.json()
        if not body.get("overwrite") and body.get("version") != current["version"]:
            return _message(412, "the folder has been changed by someone else", status="version-mismatch")
        self.folders[uid] = self._folder(
            uid, body.get("title", current["title"]), current["id"], current["version"] + 1
        )
        return web.json_response(self.folders[uid])

    @staticmethod
    def _folder(uid: str, title: str, folder_id: int, version: int) -> dict[str, Any]:
        return {
            "id": folder_id,
            "uid": uid,
            "title": title,
            "url": f"/dashboards/f/{uid}/{_slug(title)}",
            "hasAcl": False,
            "canSave": True,
            "canEdit": True,
            "canAdmin": True,
            "version": version,
        }

    # Dashboards: GET /api/dashboards/uid/:uid, POST /api/dashboards/db
    async def get_dashboard(self, request: web.Request) -> web.Response:
        uid = request.match_info["uid"]
        dashboard = self.dashboards.get(uid)
        if dashboard is None:
            return _message(404, "Dashboard not found")
        folder = self.folders[self.dashboard_folders[uid]]
        meta = {
            "type": "db",
            "canSave": True,
            "slug": _slug(dashboard["title"]),
            "url": f"/d/{uid}/{_slug(dashboard['title'])}",
            "version": dashboard["version"],
            "folderId": folder["id"],
            "folderUid": folder["uid"],
            "folderTitle": folder["title"],
            "provisioned": False,
        }
        return web.json_response({"dashboard": dashboard, "meta": meta})

    async def save_dashboard(self, request: web.Request) -> web.Response:
        body = await request.json()
        dashboard = copy.deepcopy(body["dashboard"])
        folder_uid = body.get("folderUid") or "general"
        if folder_uid != "general" and folder_uid not in self.folders:
            return _message(400, "folder not found")
        uid = dashboard.get("uid") or f"d{self._next_id()}"
        current = self.dashboards.get(uid)
        if current is not None and not body.get("overwrite") and dashboard.get("version") != current["version"]:
            return web.json_response(
                {"message": "The dashboard has been changed by someone else", "status": "version-mismatch"}, status=412
            )
        dashboard["uid"] = uid
        dashboard["id"] = current["id"] if current else self._next_id()
        dashboard["version"] = current["version"] + 1 if current else 1
        self.dashboards[uid] = dashboard
        self.dashboard_folders[uid] = folder_uid
        return web.json_response(
            {
                "id": dashboard["id"],
                "uid": uid,
                "url": f"/d/{uid}/{_slug(dashboard['title'])}",
                "status": "success",
                "version": dashboard["version"],
                "slug": _slug(dashboard["title"]),
                "folderUid": folder_uid,
            }
        )

    # Alerting provisioning: GET/PUT /api/v1/provisioning/alert-rules/:uid, POST /api/v1/provisioning/alert-rules
    async def get_rule(self, request: web.Request) -> web.Response:
        rule = self.rules.get(request.match_info["uid"])
        return web.json_response(rule) if rule else web.Response(status=404)

    async def create_rule(self, request: web.Request) -> web.Response:
        body = await request.json()
        problem = self._check_rule(body)
        if problem:
            return problem
        if body.get("uid") in self.rules:
            return _message(409, "a rule with this uid already exists")
        rule = {**body, "id": self._next_id(), "orgID": 1, "provenance": "api", "updated": "2025-01-01T00:00:00Z"}
        self.rules[rule["uid"]] = rule
        return web.json_response(rule, status=201)

    async def update_rule(self, request: web.Request) -> web.Response:
        uid = request.match_info["uid"]
        current = self.rules.get(uid)
        if current is None:
            return _message(404, "rule not found")
        body = await request.json()
        problem = self._check_rule({**body, "uid": uid})
        if problem:
            return problem
        rule = {
            **body,
            "uid": uid,
            "id": current["id"],
            "orgID": 1,
            "provenance": "api",
            "updated": "2025-01-02T00:00:00Z",
        }
        self.rules[uid] = rule
        return web.json_response(rule)

    def _check_rule(self, body: dict[str, Any]) -> web.Response | None:
        if body.get("folderUID") not in self.folders:
            return _message(400, "folder does not exist")
        if not body.get("data") or body.get("condition") not in {q["refId"] for q in body["data"]}:
            return _message(400, "invalid alert rule: condition must name one of the queries")
        for other in self.rules.values():
            if other["uid"] != body.get("uid") and (other["folderUID"], other["title"]) == (
                body["folderUID"],
                body["title"],
            ):
                return _message(
                    409,
                    "a conflicting alert rule is found: "
                    "rule title under the same organisation and folder should be unique",
                )
        return None


@asynccontextmanager
async def running_grafana() -> AsyncIterator[FakeGrafana]:
    grafana = FakeGrafana()
    app = web.Application(middlewares=[grafana.auth])
    app.router.add_get("/api/datasources/uid/{uid}", grafana.get_datasource)
    app.router.add_put("/api/datasources/uid/{uid}", grafana.update_datasource)
    app.router.add_post("/api/datasources", grafana.create_datasource)
    app.router.add_get("/api/folders/{uid}", grafana.get_folder)
    app.router.add_put("/api/folders/{uid}", grafana.update_folder)
    app.router.add_post("/api/folders", grafana.create_folder)
    app.router.add_get("/api/dashboards/uid/{uid}", grafana.get_dashboard)
    app.router.add_post("/api/dashboards/db", grafana.save_dashboard)
    app.router.add_get("/api/v1/provisioning/alert-rules/{uid}", grafana.get_rule)
    app.router.add_put("/api/v1/provisioning/alert-rules/{uid}", grafana.update_rule)
    app.router.add_post("/api/v1/provisioning/alert-rules", grafana.create_rule)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    grafana.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        yield grafana
    finally:
        await runner.cleanup()

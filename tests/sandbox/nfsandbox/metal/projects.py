"""Projects and the user (`/projects`, `/projects/{id}`, `/user`) of the Metal emulator."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from . import catalog as cat
from .model import (
    ApiError,
    Response,
    iso,
    now,
    stable_payment_id,
)

log = logging.getLogger("nfsandbox.metal")


class ProjectRoutes:
    """Part of `MetalAPI` (a mixin: it uses the API's state and lock)."""

    def _project(self, project_id: str) -> dict[str, Any]:
        with self.lock:
            project = self.projects.get(project_id)
        if project is None:
            raise ApiError(404, "Not found")
        return project

    def _project_view(self, project: dict[str, Any]) -> dict[str, Any]:
        pid = project["id"]
        with self.lock:
            devices = [d.id for d in self.devices.values() if d.project_id == pid]
            keys = [k.id for k in self.keys.values() if k.project_id == pid]
        return {
            "id": pid,
            "name": project["name"],
            "created_at": project["created_at"],
            "updated_at": project["updated_at"],
            "href": cat.href(f"/projects/{pid}"),
            "type": "default",
            "backend_transfer_enabled": False,
            "customdata": {},
            "tags": [],
            "devices": [{"href": cat.href(f"/devices/{d}")} for d in devices],
            "ssh_keys": [{"href": cat.href(f"/ssh-keys/{k}")} for k in keys],
            "members": [{"href": cat.href(f"/users/{self.user_id}")}],
            "memberships": [],
            "invitations": [],
            "volumes": [],
            "max_devices": {},
            "network_status": {},
            "payment_method": {"href": cat.href(f"/payment-methods/{stable_payment_id(pid)}")},
        }

    def _create_project(self, name: str) -> dict[str, Any]:
        pid = str(uuid.uuid4())
        stamp = iso(now())
        project = {"id": pid, "name": name, "created_at": stamp, "updated_at": stamp}
        with self.lock:
            self.projects[pid] = project
        return project

    # ----------------------------------------------------------------- handlers
    def _get_user(self, query: Any, body: Any) -> Response:
        return 200, {"id": self.user_id, "full_name": "Sandbox User", "email": "sandbox@example.invalid"}, {}

    def _list_projects(self, query: dict[str, list[str]], body: Any) -> Response:
        name = self._q(query, "name")
        with self.lock:
            items = [p for p in self.projects.values() if name is None or p["name"] == name]
        return self._page([self._project_view(p) for p in items], query, "/projects", "projects")

    def _post_project(self, query: Any, body: Any) -> Response:
        if not isinstance(body, dict) or not isinstance(body.get("name"), str) or not body["name"].strip():
            raise ApiError(422, "Name can't be blank")
        return 201, self._project_view(self._create_project(body["name"])), {}

    def _get_project(self, query: Any, body: Any, project_id: str) -> Response:
        return 200, self._project_view(self._project(project_id)), {}

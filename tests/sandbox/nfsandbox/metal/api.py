"""State and request handling of the Equinix Metal emulator, independent of HTTP.

`MetalAPI.handle(method, path, query, headers, body)` answers one request with
`(status, json_body_or_None, extra_headers)`. Devices go through Metal's life cycle in
background threads: `queued` -> `provisioning` -> `active` (or `failed`), and on delete
or at `termination_time`: `deprovisioning` -> gone (404). Booting a device asks a
`HostBackend` for a real sandbox host; see `metal.py` for the one backed by the HostPool.

The requests are answered by resource: `projects.py`, `devices.py`, `keys.py`,
`catalog_routes.py`; the life cycle is `machine.py`, the records `model.py`, the fault
knobs `faults.py`. This module routes a request to them.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import threading
import uuid
from typing import Any, Callable
from urllib.parse import urlencode

from . import catalog as cat
from .catalog_routes import CatalogRoutes
from .devices import DeviceRoutes
from .faults import MetalFaults
from .keys import KeyRoutes
from .machine import DeviceLifecycle
from .model import (
    DEFAULT_PER_PAGE,
    MAX_PER_PAGE,
    ApiError,
    Device,
    HostBackend,
    Response,
    SSHKey,
    iso,
)
from .projects import ProjectRoutes

log = logging.getLogger("nfsandbox.metal")

__all__ = ["ApiError", "Device", "MetalAPI"]


class MetalAPI(DeviceLifecycle, ProjectRoutes, DeviceRoutes, KeyRoutes, CatalogRoutes):
    def __init__(
        self,
        backend: HostBackend,
        token: str | None = None,
        project_name: str = "nixforge-sandbox",
        queued_delay: float = 0.2,
    ) -> None:
        self.backend = backend
        self.token = token or secrets.token_hex(24)
        self.user_id = str(uuid.uuid4())
        self.queued_delay = queued_delay
        self.faults = MetalFaults()
        self.lock = threading.RLock()
        self.projects: dict[str, dict[str, Any]] = {}
        self.devices: dict[str, Device] = {}
        self.keys: dict[str, SSHKey] = {}
        # Events of deprovisioned devices: the API keeps a project's events after its devices go.
        self.past_events: dict[str, list[dict[str, Any]]] = {}
        self.threads: list[threading.Thread] = []
        self.stopping = threading.Event()
        self.default_project_id = self._create_project(project_name)["id"]
        self._reaper = threading.Thread(target=self._reap_loop, name="metal-reaper", daemon=True)
        self._reaper.start()

    # ----------------------------------------------------------------- lifecycle
    def shutdown(self) -> None:
        """Stop every host the emulator booted and its background threads."""
        self.stopping.set()
        self.reset()
        for t in list(self.threads):
            t.join(timeout=30)
        self._reaper.join(timeout=5)

    def reset(self) -> None:
        """Forget every device and key (their hosts are stopped), clear the faults."""
        with self.lock:
            devices = list(self.devices.values())
            self.devices.clear()
            self.keys.clear()
            self.past_events.clear()
        for dev in devices:
            with dev.lock:
                dev.deleted = True
            self._stop_host(dev)
        self.faults.reset()

    def resources(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        with self.lock:
            for dev in self.devices.values():
                out.append(
                    {
                        "provider": "metal",
                        "type": "device",
                        "id": dev.id,
                        "name": dev.hostname,
                        "state": dev.state,
                        "plan": dev.plan,
                        "metro": dev.metro,
                        "host": getattr(dev.host, "name", None),
                        "ip": getattr(dev.host, "ip", None),
                        "tags": list(dev.tags),
                        "termination_time": iso(dev.termination_time) if dev.termination_time else None,
                    }
                )
            for key in self.keys.values():
                out.append(
                    {
                        "provider": "metal",
                        "type": "ssh_key",
                        "id": key.id,
                        "name": key.label,
                        "project": key.project_id,
                        "tags": list(key.tags),
                    }
                )
        return out

    # ----------------------------------------------------------------- HTTP entry
    def set_faults(self, faults: dict[str, Any]) -> None:
        self.faults.set(faults)

    def handle(self, method: str, path: str, query: dict[str, list[str]], headers: Any, body: bytes) -> Response:
        method = method.upper()
        path = re.sub(r"/{2,}", "/", path)
        if path.startswith(cat.API_PREFIX + "/") or path == cat.API_PREFIX:
            path = path[len(cat.API_PREFIX) :] or "/"
        path = path.rstrip("/") or "/"
        line = f"{method} {path}"
        try:
            if headers.get("X-Auth-Token") != self.token:
                raise ApiError(401, "Invalid authentication token")
            if self.faults.take("throttle", line):
                retry_after = self.faults.get("retry_after")
                extra = {"Retry-After": str(retry_after)} if retry_after > 0 else {}
                raise ApiError(429, "Too many requests, please slow down", headers=extra)
            if self.faults.take("server_error", line):
                status = self.faults.get("server_error_status")
                raise ApiError(status, "Internal server error, please try again later")
            payload: Any = None
            if body:
                try:
                    payload = json.loads(body)
                except ValueError as exc:
                    raise ApiError(422, f"Request body is not valid JSON: {exc}") from exc
            reply = self._route(method, path, query, payload)
            if self.faults.take("lost_answer", line):
                # applied, but the caller never hears of it
                raise ApiError(500, "Internal server error, please try again later")
            return reply
        except ApiError as err:
            return err.status, {"errors": err.errors}, err.headers

    def _route(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> Response:
        parts = [p for p in path.split("/") if p]
        uuid_re = r"[0-9a-fA-F-]{36}"
        routes: list[tuple[str, str, Callable[..., Response]]] = [
            ("GET", r"user", self._get_user),
            ("GET", r"projects", self._list_projects),
            ("POST", r"projects", self._post_project),
            ("GET", rf"projects/({uuid_re})", self._get_project),
            ("GET", rf"projects/({uuid_re})/devices", self._list_devices),
            ("POST", rf"projects/({uuid_re})/devices", self._create_device),
            ("GET", rf"projects/({uuid_re})/ssh-keys", self._list_project_keys),
            ("GET", rf"projects/({uuid_re})/events", self._list_project_events),
            ("GET", rf"devices/({uuid_re})/events", self._list_device_events),
            ("POST", rf"projects/({uuid_re})/ssh-keys", self._create_project_key),
            ("GET", r"ssh-keys", self._list_keys),
            ("POST", r"ssh-keys", self._create_user_key),
            ("GET", rf"ssh-keys/({uuid_re})", self._get_key),
            ("DELETE", rf"ssh-keys/({uuid_re})", self._delete_key),
            ("GET", rf"devices/({uuid_re})", self._get_device),
            ("PUT", rf"devices/({uuid_re})", self._update_device),
            ("PATCH", rf"devices/({uuid_re})", self._update_device),
            ("DELETE", rf"devices/({uuid_re})", self._delete_device),
            ("POST", rf"devices/({uuid_re})/actions", self._device_action),
            ("GET", rf"devices/({uuid_re})/ssh-keys", self._device_keys),
            ("GET", rf"devices/({uuid_re})/ips", self._device_ips),
            ("GET", r"locations/metros", self._list_metros),
            ("GET", rf"locations/metros/({uuid_re})", self._get_metro),
            ("GET", r"facilities", self._list_facilities),
            ("GET", r"plans", self._list_plans),
            ("GET", r"operating-systems", self._list_os),
            ("GET", r"market/spot/prices", self._spot_prices),
            ("GET", r"market/spot/prices/metros", self._spot_prices_metros),
        ]
        joined = "/".join(parts)
        for m, pattern, fn in routes:
            match = re.fullmatch(pattern, joined)
            if match and m == method:
                return fn(query, body, *match.groups())
        raise ApiError(404, "Not found")

    # ----------------------------------------------------------------- helpers
    @staticmethod
    def _q(query: dict[str, list[str]], name: str) -> str | None:
        values = query.get(name)
        return values[0] if values else None

    def _page(self, items: list[Any], query: dict[str, list[str]], path: str, key: str) -> Response:
        try:
            page = max(1, int(self._q(query, "page") or 1))
            per_page = min(MAX_PER_PAGE, max(1, int(self._q(query, "per_page") or DEFAULT_PER_PAGE)))
        except ValueError as exc:
            raise ApiError(422, "page and per_page must be integers") from exc
        total = len(items)
        last_page = max(1, (total + per_page - 1) // per_page)
        chunk = items[(page - 1) * per_page : page * per_page]
        keep = {k: v for k, v in query.items() if k not in ("page", "per_page")}

        def link(p: int) -> dict[str, str]:
            q = [(k, v) for k, vs in keep.items() for v in vs] + [("page", str(p)), ("per_page", str(per_page))]
            return {"href": cat.href(path) + "?" + urlencode(q)}

        meta = {
            "first": link(1),
            "previous": link(page - 1) if page > 1 else None,
            "self": link(page),
            "next": link(page + 1) if page < last_page else None,
            "last": link(last_page),
            "current_page": page,
            "last_page": last_page,
            "total": total,
        }
        return 200, {key: chunk, "meta": meta}, {}

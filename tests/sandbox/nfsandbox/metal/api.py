"""State and request handling of the Equinix Metal emulator, independent of HTTP.

`MetalAPI.handle(method, path, query, headers, body)` answers one request with
`(status, json_body_or_None, extra_headers)`. Devices go through Metal's life cycle in
background threads: `queued` -> `provisioning` -> `active` (or `failed`), and on delete
or at `termination_time`: `deprovisioning` -> gone (404). Booting a device asks a
`HostBackend` for a real sandbox host; see `metal.py` for the one backed by the HostPool.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import ipaddress
import json
import logging
import re
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol
from urllib.parse import urlencode

from . import catalog as cat
from .faults import MetalFaults

log = logging.getLogger("nfsandbox.metal")

Response = tuple[int, Any, dict[str, str]]

DEVICE_STATES_LIVE = ("queued", "provisioning", "active", "inactive", "failed", "powering_on", "powering_off")
DEFAULT_PER_PAGE = 10
MAX_PER_PAGE = 1000
SSH_KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
)


def _slug_of(body: dict[str, Any], key: str, table: Any, label: str, errors: list[str]) -> str | None:
    """body[key] when it names a row of `table`; otherwise None and Metal's error text."""
    value = body.get(key)
    if not value:
        errors.append(f"{key} is required")
        return None
    if not isinstance(value, str) or value not in table:
        errors.append(f"{label[0].upper() + label[1:]} {value!r} is not a valid {label}")
        return None
    return value


class HostBackend(Protocol):
    """What the API needs from the sandbox to turn a device into a machine."""

    def boot(self, device: Device, on_poweroff: Callable[[], None]) -> Any:
        """Start a host for the device (blocks until SSH answers); return a handle with `.ip`."""

    def stop(self, handle: Any) -> None:
        """Stop the host behind a handle returned by `boot`."""

    def network(self, handle: Any) -> tuple[str, int]:
        """(gateway, prefix length) of the network the host's address lives in."""


class ApiError(Exception):
    def __init__(self, status: int, *errors: str, headers: dict[str, str] | None = None):
        super().__init__(", ".join(errors))
        self.status = status
        self.errors = list(errors)
        self.headers = headers or {}


def now() -> float:
    return time.time()


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: Any) -> float:
    """Metal accepts RFC 3339 timestamps; without a zone they mean UTC."""
    if not isinstance(value, str) or not value:
        raise ValueError("not a timestamp")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    parsed = dt.datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return parsed.timestamp()


def ssh_fingerprint(key: str) -> str:
    """Metal shows the MD5 fingerprint of the key blob, colon-separated."""
    blob = base64.b64decode(key.split()[1])
    digest = hashlib.md5(blob, usedforsecurity=False).hexdigest()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def valid_public_key(key: Any) -> bool:
    if not isinstance(key, str):
        return False
    parts = key.strip().split()
    if len(parts) < 2 or parts[0] not in SSH_KEY_TYPES:
        return False
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        return False
    # The blob starts with the length-prefixed key type.
    if len(blob) < 4:
        return False
    n = int.from_bytes(blob[:4], "big")
    return blob[4 : 4 + n] == parts[0].encode()


@dataclass
class SSHKey:
    id: str
    label: str
    key: str
    owner_href: str
    project_id: str | None
    tags: list[str]
    created_at: float
    updated_at: float

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "label": self.label,
            "key": self.key,
            "fingerprint": ssh_fingerprint(self.key),
            "href": cat.href(f"/ssh-keys/{self.id}"),
            "entity": {"href": self.owner_href},
            "tags": list(self.tags),
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        }


@dataclass
class Device:
    id: str
    project_id: str
    hostname: str
    plan: str
    metro: str
    facility: str
    operating_system: str
    billing_cycle: str
    userdata: str
    tags: list[str]
    locked: bool
    spot_instance: bool
    spot_price_max: float | None
    termination_time: float | None
    customdata: dict[str, Any]
    description: str
    ssh_key_ids: list[str]
    authorized_keys: list[str]
    created_at: float
    updated_at: float
    state: str = "queued"
    provisioning_percentage: float | None = 0.0
    ip_addresses: list[dict[str, Any]] = field(default_factory=list)
    host: Any = None
    events: list[dict[str, Any]] = field(default_factory=list)
    deleted: bool = False
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @property
    def short_id(self) -> str:
        return self.id.split("-", 1)[0]

    @property
    def architecture(self) -> str:
        return cat.PLANS[self.plan]["architecture"]

    def event(self, type_: str, body: str) -> None:
        self.events.append(
            {
                "id": str(uuid.uuid4()),
                "type": type_,
                "body": body,
                "state": "success" if "fail" not in type_ else "failed",
                "created_at": iso(now()),
                "href": cat.href(f"/events/{uuid.uuid4()}"),
                "interpolated": body,
            }
        )

    def set_state(self, state: str) -> None:
        self.state = state
        self.updated_at = now()

    def view(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "short_id": self.short_id,
            "hostname": self.hostname,
            "description": self.description,
            "state": self.state,
            "tags": list(self.tags),
            "billing_cycle": self.billing_cycle,
            "user": "root",
            "iqn": f"iqn.2026-11.net.packet:device.{self.short_id}",
            "locked": self.locked,
            "bonding_mode": 4,
            "always_pxe": False,
            "ipxe_script_url": "",
            "customdata": self.customdata,
            "userdata": self.userdata,
            "spot_instance": self.spot_instance,
            "network_frozen": False,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "href": cat.href(f"/devices/{self.id}"),
            "plan": cat.plan_obj(self.plan),
            "metro": cat.metro_obj(self.metro),
            "facility": cat.facility_obj(self.facility),
            "operating_system": cat.os_obj(self.operating_system),
            "project": {"href": cat.href(f"/projects/{self.project_id}")},
            "project_lite": {"href": cat.href(f"/projects/{self.project_id}")},
            "ssh_keys": [{"href": cat.href(f"/ssh-keys/{k}")} for k in self.ssh_key_ids],
            "ip_addresses": [dict(a) for a in self.ip_addresses],
            "volumes": [],
            "provisioning_events": list(self.events),
            "actions": [
                {"type": t, "name": n}
                for t, n in (("power_on", "Power On"), ("power_off", "Power Off"), ("reboot", "Reboot"))
            ],
            "sos": f"{self.id}@sos.{self.facility}.platformequinix.com",
        }
        if self.spot_instance and self.spot_price_max is not None:
            data["spot_price_max"] = self.spot_price_max
        if self.termination_time is not None:
            data["termination_time"] = iso(self.termination_time)
        if self.state in ("queued", "provisioning"):
            data["provisioning_percentage"] = self.provisioning_percentage or 0.0
        return data


class MetalAPI:
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

    def _spawn(self, target: Callable[..., None], *args: Any, name: str) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self.lock:
            self.threads = [x for x in self.threads if x.is_alive()]
            self.threads.append(t)
        t.start()

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless the emulator is stopping; False when it is."""
        return not self.stopping.wait(max(0.0, seconds))

    def _provision(self, dev: Device) -> None:
        if not self._sleep(self.queued_delay):
            return
        with dev.lock:
            if dev.deleted:
                return
            dev.set_state("provisioning")
            dev.provisioning_percentage = 10.0
            dev.event("provisioning.started", f"Provisioning started for {dev.hostname}")
        if self.faults.take("fail_provisioning"):
            self._sleep(0.2)
            with dev.lock:
                if not dev.deleted:
                    dev.set_state("failed")
                    dev.provisioning_percentage = None
                    dev.event("provisioning.failed", "Provisioning failed: hardware did not pass health checks")
            log.info("metal: device %s failed (fault injection)", dev.id)
            return
        try:
            handle = self.backend.boot(dev, lambda: self._on_poweroff(dev))
        except Exception as exc:
            log.exception("metal: booting a host for device %s failed", dev.id)
            with dev.lock:
                if not dev.deleted:
                    dev.set_state("failed")
                    dev.provisioning_percentage = None
                    dev.event("provisioning.failed", f"Provisioning failed: {exc}")
            return
        with dev.lock:
            dev.host = handle
            if dev.deleted:
                stale = True
            else:
                stale = False
                dev.provisioning_percentage = 80.0
        if stale:
            self._stop_host(dev)
            return
        self._sleep(self.faults.get("provision_delay"))
        with dev.lock:
            if dev.deleted or dev.state != "provisioning":
                return
            dev.ip_addresses = self._addresses(dev, handle)
            dev.provisioning_percentage = None
            dev.set_state("active")
            dev.event("provisioning.complete", f"Provisioning completed for {dev.hostname}")
        log.info("metal: device %s active at %s", dev.id, getattr(handle, "ip", "?"))

    def _addresses(self, dev: Device, handle: Any) -> list[dict[str, Any]]:
        ip = handle.ip
        gateway, prefix = self.backend.network(handle)
        net = ipaddress.ip_network(f"{ip}/{prefix}", strict=False)
        created = iso(now())

        def assignment(address: str, family: int, public: bool, network: Any, gw: str) -> dict[str, Any]:
            aid = str(uuid.uuid4())
            return {
                "id": aid,
                "address_family": family,
                "netmask": str(network.netmask),
                "created_at": created,
                "public": public,
                "cidr": network.prefixlen,
                "management": True,
                "manageable": True,
                "enabled": True,
                "global_ip": False,
                "address": address,
                "network": str(network.network_address),
                "gateway": gw,
                "href": cat.href(f"/ips/{aid}"),
                "assigned_to": {"href": cat.href(f"/devices/{dev.id}")},
                "parent_block": {
                    "network": str(network.network_address),
                    "netmask": str(network.netmask),
                    "cidr": network.prefixlen,
                    "href": cat.href(f"/ips/{uuid.uuid4()}"),
                },
            }

        # Public IPv4: the sandbox host itself (reachable). The private IPv4 and the public
        # IPv6 are there for shape only: nothing answers on them in the sandbox.
        n = int(dev.id.replace("-", "")[:4], 16)
        private = ipaddress.ip_network(f"10.{(n >> 8) & 0xFF}.{n & 0xFF}.0/31")
        v6 = ipaddress.ip_network(f"2001:db8:{n:x}::/127")
        return [
            assignment(ip, 4, True, net, gateway),
            assignment(str(private.network_address + 1), 4, False, private, str(private.network_address)),
            assignment(str(v6.network_address + 1), 6, True, v6, str(v6.network_address)),
        ]

    def _on_poweroff(self, dev: Device) -> None:
        """The OS on the device powered off (e.g. a poweroff scheduled in userdata)."""
        with dev.lock:
            if dev.deleted:
                return
            dev.host = None
            dev.set_state("inactive")
            dev.event("power.off", "Device powered off from the operating system")

    def _stop_host(self, dev: Device) -> None:
        with dev.lock:
            handle, dev.host = dev.host, None
        if handle is not None:
            try:
                self.backend.stop(handle)
            except Exception:
                log.exception("metal: stopping the host of device %s failed", dev.id)

    def _deprovision(self, dev: Device) -> None:
        self._stop_host(dev)
        self._sleep(self.faults.get("deprovision_delay"))
        with self.lock:
            self.devices.pop(dev.id, None)
            self.past_events.setdefault(dev.project_id, []).extend(self._device_events(dev))
        log.info("metal: device %s deprovisioned", dev.id)

    def _start_deprovision(self, dev: Device, reason: str) -> None:
        with dev.lock:
            if dev.deleted:
                return
            dev.deleted = True
            dev.set_state("deprovisioning")
            dev.event("deprovisioning.started", reason)
        self._spawn(self._deprovision, dev, name=f"metal-deprovision-{dev.short_id}")

    def _reclaim_due(self) -> None:
        """The `reclaim` fault: the spot market takes back a matching device once due."""
        needle = self.faults.get("reclaim")
        if not needle:
            return
        with self.lock:
            devices = [d for d in self.devices.values() if d.state == "active" and not d.deleted]
        for dev in devices:
            if needle != dev.id and not any(needle in tag for tag in dev.tags):
                continue
            active_since = dev.__dict__.setdefault("_nf_active_since", now())
            if now() - active_since < self.faults.get("reclaim_after"):
                continue
            with self.faults.lock:
                self.faults.values["reclaim"] = ""
            self.faults.count("reclaim")
            log.info("metal: device %s reclaimed by the spot market (fault)", dev.id)
            dev.event("termination.spot_market", "Device reclaimed: the spot market price exceeded the bid")
            self._start_deprovision(dev, "Device reclaimed by the spot market")
            return

    def _reap_loop(self) -> None:
        while not self.stopping.wait(0.25):
            self._reclaim_due()
            t = now()
            with self.lock:
                due = [d for d in self.devices.values() if d.termination_time is not None and d.termination_time <= t]
            for dev in due:
                if not dev.deleted:
                    log.info("metal: device %s reached its termination_time", dev.id)
                    dev.event("termination.time", "Device reached its termination_time")
                    self._start_deprovision(dev, "Device terminated at its termination_time")

    def _power_on(self, dev: Device) -> None:
        try:
            handle = self.backend.boot(dev, lambda: self._on_poweroff(dev))
        except Exception as exc:
            log.exception("metal: powering on device %s failed", dev.id)
            with dev.lock:
                dev.set_state("inactive")
                dev.event("power.on.failed", str(exc))
            return
        with dev.lock:
            if dev.deleted:
                stale = True
            else:
                stale = False
                dev.host = handle
                dev.ip_addresses = self._addresses(dev, handle)
                dev.set_state("active")
        if stale:
            self.backend.stop(handle)

    def _power_off(self, dev: Device) -> None:
        self._stop_host(dev)
        with dev.lock:
            if not dev.deleted:
                dev.set_state("inactive")

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

    def _device(self, device_id: str) -> Device:
        with self.lock:
            dev = self.devices.get(device_id)
        if dev is None:
            raise ApiError(404, "Not found")
        return dev

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

    def _list_devices(self, query: dict[str, list[str]], body: Any, project_id: str) -> Response:
        self._project(project_id)
        tag = self._q(query, "tag")
        hostname = self._q(query, "hostname")
        search = self._q(query, "search")
        state = self._q(query, "state")
        with self.lock:
            devs = [d for d in self.devices.values() if d.project_id == project_id]
        devs.sort(key=lambda d: d.created_at)
        out = []
        for d in devs:
            if tag is not None and tag not in d.tags:
                continue
            if hostname is not None and d.hostname != hostname:
                continue
            if state is not None and d.state != state:
                continue
            if search and search not in d.hostname and search not in d.id and not any(search in t for t in d.tags):
                continue
            out.append(d.view())
        return self._page(out, query, f"/projects/{project_id}/devices", "devices")

    @staticmethod
    def _device_events(dev: Device) -> list[dict[str, Any]]:
        with dev.lock:
            return [dict(e, relationships=[{"href": cat.href(f"/devices/{dev.id}")}]) for e in dev.events]

    def _list_project_events(self, query: dict[str, list[str]], body: Any, project_id: str) -> Response:
        self._project(project_id)
        with self.lock:
            out = list(self.past_events.get(project_id, []))
            devs = [d for d in self.devices.values() if d.project_id == project_id]
        for d in devs:
            out.extend(self._device_events(d))
        out.sort(key=lambda e: e["created_at"], reverse=True)  # newest first, as the API lists them
        return self._page(out, query, f"/projects/{project_id}/events", "events")

    def _list_device_events(self, query: dict[str, list[str]], body: Any, device_id: str) -> Response:
        dev = self._device(device_id)
        out = sorted(self._device_events(dev), key=lambda e: e["created_at"], reverse=True)
        return self._page(out, query, f"/devices/{device_id}/events", "events")

    def _create_device(self, query: Any, body: Any, project_id: str) -> Response:
        self._project(project_id)
        if not isinstance(body, dict):
            raise ApiError(422, "Request body must be a JSON object")
        errors: list[str] = []

        plan = _slug_of(body, "plan", cat.PLANS, "plan", errors)
        os_slug = _slug_of(body, "operating_system", cat.OPERATING_SYSTEMS, "operating system", errors)

        metro, facility = self._placement(body, plan, errors)

        if plan and os_slug and plan not in cat.OPERATING_SYSTEMS[os_slug][3]:
            errors.append(f"Operating system {os_slug} is not provisionable on plan {plan}")

        billing = body.get("billing_cycle", "hourly")
        if billing not in ("hourly", "daily", "monthly", "yearly"):
            errors.append(f"billing_cycle {billing!r} is not one of hourly, daily, monthly, yearly")

        hostname = body.get("hostname")
        if hostname in (None, ""):
            hostname = None
        elif not isinstance(hostname, str) or not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,62})", hostname):
            errors.append(f"Hostname {hostname!r} is invalid")

        tags = body.get("tags", [])
        if tags is None:
            tags = []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            errors.append("tags must be a list of strings")
            tags = []

        userdata = body.get("userdata") or ""
        if not isinstance(userdata, str):
            errors.append("userdata must be a string")
            userdata = ""

        spot = bool(body.get("spot_instance", False))
        spot_max: float | None = None
        if spot:
            raw = body.get("spot_price_max")
            if not isinstance(raw, (int, float)) or isinstance(raw, bool) or raw <= 0:
                errors.append("spot_price_max must be a positive number for spot instances")
            else:
                spot_max = float(raw)
                if plan and metro:
                    current = cat.spot_price(plan, metro)
                    if spot_max < current:
                        errors.append(
                            f"spot_price_max {spot_max:.2f} is below the current spot market price "
                            f"{current:.2f} of {plan} in {metro}"
                        )

        termination: float | None = None
        raw_tt = body.get("termination_time")
        if raw_tt not in (None, ""):
            try:
                termination = parse_time(raw_tt)
            except (ValueError, TypeError):
                errors.append(f"termination_time {raw_tt!r} is not a valid RFC 3339 timestamp")
            else:
                if termination <= now():
                    errors.append("termination_time must be in the future")

        key_ids, authorized, key_errors = self._device_keys_for(project_id, body)
        errors.extend(key_errors)

        customdata = body.get("customdata") or {}
        if not isinstance(customdata, dict):
            errors.append("customdata must be an object")
            customdata = {}
        description = body.get("description") or ""

        if errors:
            raise ApiError(422, *errors)
        assert plan and os_slug and metro and facility

        stamp = now()
        device_id = str(uuid.uuid4())
        dev = Device(
            id=device_id,
            project_id=project_id,
            hostname=hostname or f"{plan.split('.', 1)[0]}-{device_id.split('-', 1)[0]}",
            plan=plan,
            metro=metro,
            facility=facility,
            operating_system=os_slug,
            billing_cycle=billing,
            userdata=userdata,
            tags=list(tags),
            locked=bool(body.get("locked", False)),
            spot_instance=spot,
            spot_price_max=spot_max,
            termination_time=termination,
            customdata=customdata,
            description=str(description),
            ssh_key_ids=key_ids,
            authorized_keys=authorized,
            created_at=stamp,
            updated_at=stamp,
        )
        dev.event("instance.created", f"Device {dev.hostname} created")
        with self.lock:
            self.devices[device_id] = dev
        self._spawn(self._provision, dev, name=f"metal-provision-{dev.short_id}")
        return 201, dev.view(), {}

    def _placement(self, body: dict[str, Any], plan: str | None, errors: list[str]) -> tuple[str | None, str | None]:
        metro_raw = body.get("metro")
        facility_raw = body.get("facility")
        if metro_raw in (None, "") and facility_raw in (None, "", []):
            errors.append("metro or facility is required")
            return None, None
        candidates: list[tuple[str, str | None]] = []  # (metro, facility or None)
        if metro_raw not in (None, ""):
            if metro_raw == "any":
                candidates = [(c, None) for c, _n, _x in cat.METROS]
            else:
                metro = cat.resolve_metro(str(metro_raw))
                if metro is None:
                    errors.append(f"Metro {metro_raw!r} is not a valid metro")
                    return None, None
                candidates = [(metro, None)]
        else:
            facs = facility_raw if isinstance(facility_raw, list) else [facility_raw]
            for f in facs:
                if f == "any":
                    candidates.extend((c, None) for c, _n, _x in cat.METROS)
                    continue
                code = cat.resolve_facility(str(f))
                if code is None:
                    errors.append(f"Facility {f!r} is not a valid facility")
                    return None, None
                metro_of = cat.metro_of_facility(code)
                assert metro_of is not None
                candidates.append((metro_of, code))
        if plan is None:
            metro, fac = candidates[0]
            return metro, fac or cat.facilities_in(metro)[0]
        for metro, fac in candidates:
            if metro in cat.PLANS[plan]["metros"]:
                return metro, fac or cat.facilities_in(metro)[0]
        where = ", ".join(sorted({f or m for m, f in candidates}))
        errors.append(f"Plan {plan} is not available in {where}")
        return None, None

    def _device_keys_for(self, project_id: str, body: dict[str, Any]) -> tuple[list[str], list[str], list[str]]:
        """Which keys end up in root's authorized_keys (Metal's documented rules)."""
        errors: list[str] = []
        requested = False
        ids: list[str] = []
        for field_name in ("project_ssh_keys", "user_ssh_keys"):
            value = body.get(field_name) or []
            if not isinstance(value, list):
                errors.append(f"{field_name} must be a list")
                continue
            if value:
                requested = True
            for item in value:
                if field_name == "project_ssh_keys":
                    with self.lock:
                        key = self.keys.get(str(item))
                    if key is None or key.project_id != project_id:
                        errors.append(f"project_ssh_keys: SSH key {item} is not a key of this project")
                        continue
                    ids.append(key.id)
                else:
                    if str(item) != self.user_id:
                        errors.append(f"user_ssh_keys: user {item} is not a member of this project")
                        continue
                    with self.lock:
                        ids.extend(k.id for k in self.keys.values() if k.project_id is None)
        inline = body.get("ssh_keys") or []
        inline_keys: list[str] = []
        if not isinstance(inline, list):
            errors.append("ssh_keys must be a list")
        else:
            for item in inline:
                if isinstance(item, dict) and valid_public_key(item.get("key")):
                    inline_keys.append(item["key"].strip())
                    requested = True
                else:
                    errors.append("ssh_keys: each entry needs a valid public key in `key`")
        if not requested and not body.get("no_ssh_keys"):
            with self.lock:
                ids = [k.id for k in self.keys.values() if k.project_id in (project_id, None)]
        seen: list[str] = []
        for i in ids:
            if i not in seen:
                seen.append(i)
        with self.lock:
            authorized = [self.keys[i].key for i in seen if i in self.keys]
        return seen, authorized + inline_keys, errors

    def _get_device(self, query: Any, body: Any, device_id: str) -> Response:
        dev = self._device(device_id)
        with dev.lock:
            return 200, dev.view(), {}

    def _update_device(self, query: Any, body: Any, device_id: str) -> Response:
        dev = self._device(device_id)
        if not isinstance(body, dict):
            raise ApiError(422, "Request body must be a JSON object")
        with dev.lock:
            if "tags" in body:
                if not isinstance(body["tags"], list) or not all(isinstance(t, str) for t in body["tags"]):
                    raise ApiError(422, "tags must be a list of strings")
                dev.tags = list(body["tags"])
            for name in ("hostname", "description"):
                if isinstance(body.get(name), str):
                    setattr(dev, name, body[name])
            if isinstance(body.get("locked"), bool):
                dev.locked = body["locked"]
            if "termination_time" in body:
                raw = body["termination_time"]
                if raw in (None, ""):
                    dev.termination_time = None
                else:
                    try:
                        dev.termination_time = parse_time(raw)
                    except (ValueError, TypeError) as exc:
                        raise ApiError(422, f"termination_time {raw!r} is not a valid RFC 3339 timestamp") from exc
            dev.updated_at = now()
            return 200, dev.view(), {}

    def _delete_device(self, query: dict[str, list[str]], body: Any, device_id: str) -> Response:
        dev = self._device(device_id)
        with dev.lock:
            if dev.locked:
                raise ApiError(422, "Cannot delete a locked device, unlock it first")
            already = dev.deleted
        if not already:
            self._start_deprovision(dev, "Device deleted through the API")
        return 204, None, {}

    def _device_action(self, query: Any, body: Any, device_id: str) -> Response:
        dev = self._device(device_id)
        if not isinstance(body, dict) or body.get("type") not in (
            "power_on",
            "power_off",
            "reboot",
            "rescue",
            "reinstall",
        ):
            raise ApiError(422, "type must be one of power_on, power_off, reboot, rescue, reinstall")
        action = body["type"]
        with dev.lock:
            state = dev.state
            if dev.deleted:
                raise ApiError(422, f"Device is {state}")
            if action in ("rescue", "reinstall"):
                raise ApiError(422, f"{action} is not supported by the sandbox emulator")
            if action == "power_off":
                if state != "active":
                    raise ApiError(422, f"Cannot power off a device that is {state}")
                dev.set_state("powering_off")
                self._spawn(self._power_off, dev, name=f"metal-poweroff-{dev.short_id}")
            elif action == "power_on":
                if state != "inactive":
                    raise ApiError(422, f"Cannot power on a device that is {state}")
                dev.set_state("powering_on")
                self._spawn(self._power_on, dev, name=f"metal-poweron-{dev.short_id}")
            elif state != "active":
                raise ApiError(422, f"Cannot reboot a device that is {state}")
        return 202, None, {}

    def _device_keys(self, query: Any, body: Any, device_id: str) -> Response:
        dev = self._device(device_id)
        with self.lock:
            keys = [self.keys[k].view() for k in dev.ssh_key_ids if k in self.keys]
        return 200, {"ssh_keys": keys}, {}

    def _device_ips(self, query: Any, body: Any, device_id: str) -> Response:
        dev = self._device(device_id)
        with dev.lock:
            return 200, {"ip_addresses": [dict(a) for a in dev.ip_addresses]}, {}

    def _new_key(self, body: Any, owner_href: str, project_id: str | None) -> Response:
        if not isinstance(body, dict):
            raise ApiError(422, "Request body must be a JSON object")
        errors = []
        key = body.get("key")
        if not valid_public_key(key):
            errors.append("Key is invalid")
        label = body.get("label")
        if label is not None and not isinstance(label, str):
            errors.append("label must be a string")
        tags = body.get("tags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            errors.append("tags must be a list of strings")
        if errors:
            raise ApiError(422, *errors)
        assert isinstance(key, str)
        key = key.strip()
        fp = ssh_fingerprint(key)
        with self.lock:
            for other in self.keys.values():
                if other.project_id == project_id and ssh_fingerprint(other.key) == fp:
                    raise ApiError(422, "Fingerprint has already been taken")
            stamp = now()
            new = SSHKey(
                id=str(uuid.uuid4()),
                label=label or "",
                key=key,
                owner_href=owner_href,
                project_id=project_id,
                tags=list(tags),
                created_at=stamp,
                updated_at=stamp,
            )
            self.keys[new.id] = new
        return 201, new.view(), {}

    def _list_project_keys(self, query: Any, body: Any, project_id: str) -> Response:
        self._project(project_id)
        with self.lock:
            keys = [k.view() for k in self.keys.values() if k.project_id == project_id]
        return 200, {"ssh_keys": keys}, {}

    def _create_project_key(self, query: Any, body: Any, project_id: str) -> Response:
        self._project(project_id)
        return self._new_key(body, cat.href(f"/projects/{project_id}"), project_id)

    def _list_keys(self, query: dict[str, list[str]], body: Any) -> Response:
        search = self._q(query, "search")
        with self.lock:
            keys = [k.view() for k in self.keys.values()]
        if search:
            keys = [k for k in keys if search in k["label"] or search in k["key"] or search in k["fingerprint"]]
        return 200, {"ssh_keys": keys}, {}

    def _create_user_key(self, query: Any, body: Any) -> Response:
        return self._new_key(body, cat.href(f"/users/{self.user_id}"), None)

    def _get_key(self, query: Any, body: Any, key_id: str) -> Response:
        with self.lock:
            key = self.keys.get(key_id)
        if key is None:
            raise ApiError(404, "Not found")
        return 200, key.view(), {}

    def _delete_key(self, query: Any, body: Any, key_id: str) -> Response:
        with self.lock:
            key = self.keys.pop(key_id, None)
        if key is None:
            raise ApiError(404, "Not found")
        return 204, None, {}

    def _list_metros(self, query: Any, body: Any) -> Response:
        return 200, {"metros": [cat.metro_obj(c) for c, _n, _x in cat.METROS]}, {}

    def _get_metro(self, query: Any, body: Any, metro_id: str) -> Response:
        code = cat.resolve_metro(metro_id)
        if code is None:
            raise ApiError(404, "Not found")
        return 200, cat.metro_obj(code), {}

    def _list_facilities(self, query: Any, body: Any) -> Response:
        return 200, {"facilities": [cat.facility_obj(c) for c, _n, _m in cat.FACILITIES]}, {}

    def _list_plans(self, query: dict[str, list[str]], body: Any) -> Response:
        slug = self._q(query, "slug")
        type_ = self._q(query, "type")
        categories = query.get("categories[]") or query.get("categories") or []
        plans = [cat.plan_obj(s) for s in cat.PLANS]
        if slug:
            plans = [p for p in plans if p["slug"] == slug]
        if type_:
            plans = [p for p in plans if p["type"] == type_]
        if categories:
            plans = [p for p in plans if set(categories) & set(p["categories"])]
        return 200, {"plans": plans}, {}

    def _list_os(self, query: Any, body: Any) -> Response:
        return 200, {"operating_systems": [cat.os_obj(s) for s in cat.OPERATING_SYSTEMS]}, {}

    def _spot_prices(self, query: Any, body: Any) -> Response:
        prices: dict[str, dict[str, dict[str, float]]] = {}
        for fac, _n, metro in cat.FACILITIES:
            prices[fac] = {
                slug: {"price": cat.spot_price(slug, metro)} for slug, p in cat.PLANS.items() if metro in p["metros"]
            }
        return 200, {"spot_market_prices": prices}, {}

    def _spot_prices_metros(self, query: Any, body: Any) -> Response:
        prices = {
            metro: {
                slug: {"price": cat.spot_price(slug, metro)} for slug, p in cat.PLANS.items() if metro in p["metros"]
            }
            for metro, _n, _c in cat.METROS
        }
        return 200, {"spot_market_prices": prices}, {}


def stable_payment_id(project_id: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "payment:" + project_id))

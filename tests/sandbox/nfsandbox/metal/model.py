"""The Equinix Metal emulator's records (devices, SSH keys), its errors and time helpers:
what every part of the emulator (routes, life cycle) shares.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from . import catalog as cat

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


def slug_of(body: dict[str, Any], key: str, table: Any, label: str, errors: list[str]) -> str | None:
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


def stable_payment_id(project_id: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "payment:" + project_id))

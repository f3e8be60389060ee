"""Devices (`/projects/{id}/devices`, `/devices/{id}`, their actions, events, keys and IPs)
of the Metal emulator: the checks of a create request are Metal's, answered with its 422s.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

from . import catalog as cat
from .model import (
    ApiError,
    Device,
    Response,
    now,
    parse_time,
    slug_of,
    valid_public_key,
)

log = logging.getLogger("nfsandbox.metal")


class DeviceRoutes:
    """Part of `MetalAPI` (a mixin: it uses the API's state and lock)."""

    def _device(self, device_id: str) -> Device:
        with self.lock:
            dev = self.devices.get(device_id)
        if dev is None:
            raise ApiError(404, "Not found")
        return dev

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
        plan = slug_of(body, "plan", cat.PLANS, "plan", errors)
        os_slug = slug_of(body, "operating_system", cat.OPERATING_SYSTEMS, "operating system", errors)
        metro, facility = self._placement(body, plan, errors)
        if plan and os_slug and plan not in cat.OPERATING_SYSTEMS[os_slug][3]:
            errors.append(f"Operating system {os_slug} is not provisionable on plan {plan}")
        hostname, fields = _device_fields(body, errors)
        fields.update(_spot_fields(body, plan, metro, errors))
        fields["termination_time"] = _termination_time(body, errors)
        key_ids, authorized, key_errors = self._device_keys_for(project_id, body)
        errors.extend(key_errors)
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
            ssh_key_ids=key_ids,
            authorized_keys=authorized,
            created_at=stamp,
            updated_at=stamp,
            **fields,
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


def _device_fields(body: dict[str, Any], errors: list[str]) -> tuple[str | None, dict[str, Any]]:
    """The hostname and the plain fields of a create request (Metal's checks; problems
    appended to ``errors``)."""
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
    customdata = body.get("customdata") or {}
    if not isinstance(customdata, dict):
        errors.append("customdata must be an object")
        customdata = {}
    return hostname, {
        "billing_cycle": billing,
        "userdata": userdata,
        "tags": list(tags),
        "locked": bool(body.get("locked", False)),
        "customdata": customdata,
        "description": str(body.get("description") or ""),
    }


def _spot_fields(body: dict[str, Any], plan: str | None, metro: str | None, errors: list[str]) -> dict[str, Any]:
    """``spot_instance`` and its bid, refused below the current market price, as Metal does."""
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
    return {"spot_instance": spot, "spot_price_max": spot_max}


def _termination_time(body: dict[str, Any], errors: list[str]) -> float | None:
    raw = body.get("termination_time")
    if raw in (None, ""):
        return None
    try:
        termination = parse_time(raw)
    except (ValueError, TypeError):
        errors.append(f"termination_time {raw!r} is not a valid RFC 3339 timestamp")
        return None
    if termination <= now():
        errors.append("termination_time must be in the future")
    return termination

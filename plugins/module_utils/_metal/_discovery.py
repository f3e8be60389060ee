# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to this collection: read-only discovery of Metal builders; no stable interface.
"""Read-only discovery of our Equinix Metal builders (devices tagged ``nixforge-build-id=...``).

    client = metal_client(params)                     # module_utils/_metal/_client.py
    builders = list_builders(client, project_id, build_ids=["b1"])

Metal tags are plain strings; ours are ``key=value``. With build ids the API filters
(``?tag=nixforge-build-id=b1``, exact match); without, every device of the project is
listed and ours are picked here.
"""

from __future__ import annotations

import datetime
import re
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

from ansible_collections.nixforge.images.plugins.module_utils._base._discovery import (
    builder_record,
    filter_builds,
    group_builds,
    resource_record,
    tagged_builders,
)
from ansible_collections.nixforge.images.plugins.module_utils._base._identity import TAG_BUILD_ID
from ansible_collections.nixforge.images.plugins.module_utils._metal._client import tag_dict

__all__ = [
    "GONE_STATES",
    "device_addresses",
    "ended_devices",
    "list_builders",
    "list_builds",
    "plan_price",
    "record_from_device",
]

# A device in these states no longer runs nor costs.
GONE_STATES = ("deprovisioning", "deleted")
DEFAULT_SSH_USER = "root"  # Metal installs the project's keys for root
# Events of these types mean the provider ended the device (spot market reclaim, termination_time).
END_EVENT_PREFIX = "termination."
# The project's event list is newest first; a build's events are in its first pages.
EVENT_PAGES = 5


def device_addresses(device: Mapping[str, Any]) -> Dict[str, Optional[str]]:
    found: Dict[str, Optional[str]] = {"public_ipv4": None, "private_ipv4": None, "public_ipv6": None}
    for entry in device.get("ip_addresses") or []:
        family = int(entry.get("address_family") or 4)
        public = bool(entry.get("public"))
        key = "public_ipv6" if family == 6 and public else ("public_ipv4" if public else "private_ipv4")
        if family == 6 and not public:
            continue
        if found[key] is None and entry.get("address"):
            found[key] = str(entry["address"])
    return found


def plan_price(device: Mapping[str, Any]) -> Optional[float]:
    """USD per hour: the spot bid for a spot device, else the plan's price."""
    if device.get("spot_instance") and device.get("spot_price_max") is not None:
        try:
            return float(device["spot_price_max"])
        except (TypeError, ValueError):
            return None
    plan = device.get("plan") or {}
    hour = (plan.get("pricing") or {}).get("hour")
    if hour is None:
        for entry in plan.get("available_in") or plan.get("available_in_metros") or []:
            hour = (entry.get("price") or {}).get("hour")
            if hour is not None:
                break
    try:
        return float(hour) if hour is not None else None
    except (TypeError, ValueError):
        return None


def _architecture(plan: Mapping[str, Any]) -> str:
    slug = str(plan.get("slug") or "")
    if slug.endswith((".arm64", ".arm")) or "arm" in slug.rsplit(".", 1)[-1]:
        return "aarch64"
    return "x86_64"


def record_from_device(device: Mapping[str, Any], now: Optional[datetime.datetime] = None) -> Dict[str, Any]:
    tags = tag_dict(device.get("tags"))
    plan = device.get("plan") or {}
    metro = (device.get("metro") or {}).get("code")
    facility = (device.get("facility") or {}).get("code")
    return builder_record(
        "metal",
        device.get("id", ""),
        device.get("hostname") or str(device.get("id", "")),
        tags,
        now=now,
        state=device.get("state"),
        location=metro,
        zone=facility,
        instance_type=plan.get("slug"),
        architecture=_architecture(plan),
        price_per_hour=plan_price(device),
        lifecycle="spot" if device.get("spot_instance") else "on-demand",
        launched_at=device.get("created_at"),
        ssh_user=DEFAULT_SSH_USER,
        **device_addresses(device),
    )


def list_builders(
    client: Any,
    project_id: str,
    build_ids: Iterable[str] = (),
    pipelines: Iterable[str] = (),
    expired: Optional[bool] = None,
    now: Optional[datetime.datetime] = None,
) -> List[Dict[str, Any]]:
    """Builder records of the project's devices that carry our tags (gone ones left out)."""
    path = "projects/%s/devices" % project_id
    what = "Listing the builders of project %s" % project_id

    def devices(build_id: Optional[str]) -> List[Dict[str, Any]]:
        query = {} if build_id is None else {"tag": "%s=%s" % (TAG_BUILD_ID, build_id)}
        return client.paginate(path, "devices", what=what, **query)

    return tagged_builders(devices, record_from_device, ("state", GONE_STATES), build_ids, pipelines, expired, now)


# -- every resource of ours, grouped by build (for the reaper) ------------------------

# metal_device labels the per-build project key "nixforge-<build id>-ssh" and tags it.
_KEY_LABEL_RE = re.compile(r"^nixforge-([a-z0-9][a-z0-9-]*[a-z0-9]|[a-z0-9])-ssh$")


def key_tags(key: Mapping[str, Any]) -> Dict[str, str]:
    """A project key's build tags; a key found by its label only gets the build id."""
    tags = tag_dict(key.get("tags"))
    if not tags.get(TAG_BUILD_ID):
        match = _KEY_LABEL_RE.match(str(key.get("label") or ""))
        if match:
            tags[TAG_BUILD_ID] = match.group(1)
    return tags


def list_builds(
    client: Any,
    project_id: str,
    build_ids: Iterable[str] = (),
    expired: Optional[bool] = None,
    now: Optional[datetime.datetime] = None,
) -> List[Dict[str, Any]]:
    """Build records (see ``_discovery.group_builds``) of the project's devices and SSH keys."""
    build_ids = list(build_ids or [])
    found: List[Tuple[Dict[str, str], Dict[str, Any]]] = []
    devices = client.paginate(
        "projects/%s/devices" % project_id, "devices", what="Listing the devices of %s" % project_id
    )
    for device in devices:
        if device.get("state") == "deleted":
            continue
        found.append(
            (
                tag_dict(device.get("tags")),
                resource_record("device", device.get("id"), device.get("hostname"), project_id, device.get("state")),
            )
        )
    data = client.call("projects/%s/ssh-keys" % project_id, what="Listing the SSH keys of %s" % project_id) or {}
    for key in data.get("ssh_keys") or []:
        found.append((key_tags(key), resource_record("ssh_key", key.get("id"), key.get("label"), project_id)))
    return filter_builds(group_builds(found, now), build_ids, expired)


# -- devices the provider ended before we deleted them (for teardown reports) ---------


def _device_id_of(event: Mapping[str, Any]) -> Optional[str]:
    for rel in event.get("relationships") or []:
        match = re.search(r"/devices/([0-9a-fA-F-]{36})$", str((rel or {}).get("href") or ""))
        if match:
            return match.group(1)
    return None


def project_events(client: Any, project_id: str, pages: int = EVENT_PAGES) -> Dict[str, List[Dict[str, Any]]]:
    """The project's newest events (at most ``pages`` pages), by device id, newest first."""
    by_device: Dict[str, List[Dict[str, Any]]] = {}
    for page in range(1, pages + 1):
        data = client.call(
            "projects/%s/events" % project_id,
            params={"page": page, "per_page": 100},
            what="Reading the events of project %s" % project_id,
            missing_ok=True,  # an endpoint without the events API: nothing to report, not a failure
        )
        data = data or {}
        for event in data.get("events") or []:
            device_id = _device_id_of(event)
            if device_id:
                by_device.setdefault(device_id, []).append(event)
        meta = data.get("meta") or {}
        if not meta.get("next") or page >= int(meta.get("last_page") or page):
            break
    return by_device


def end_event(events: Iterable[Mapping[str, Any]]) -> Optional[Mapping[str, Any]]:
    """The newest event that says the provider ended the device, if any."""
    ends = [e for e in events if str(e.get("type") or "").startswith(END_EVENT_PREFIX)]
    return max(ends, key=lambda e: str(e.get("created_at") or "")) if ends else None


def ended_devices(
    client: Any, project_id: str, devices: Iterable[Mapping[str, Any]], known_ids: Iterable[str] = ()
) -> List[Dict[str, str]]:
    """Devices of a build that the provider ended: listed ones already going, and known
    ones (from the build's own record) already gone from the API, each with the event
    that ended it. The API forgets a deprovisioned device, not its project's events."""
    listed = {str(d.get("id")): d for d in devices}
    candidates = [i for i, d in listed.items() if d.get("state") in GONE_STATES]
    candidates += [str(i) for i in known_ids if i and str(i) not in listed and str(i) not in candidates]
    if not candidates:
        return []
    events = project_events(client, project_id)
    ended = []
    for device_id in candidates:
        own = list((listed.get(device_id) or {}).get("provisioning_events") or [])
        event = end_event(own + events.get(device_id, []))
        if event is not None:
            ended.append(
                {
                    "device_id": device_id,
                    "code": str(event.get("type")),
                    "message": str(event.get("interpolated") or event.get("body") or ""),
                }
            )
    return ended

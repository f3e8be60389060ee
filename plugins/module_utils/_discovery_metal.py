# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read-only discovery of our Equinix Metal builders (devices tagged ``nixforge-build-id=...``).

    client = metal_client(params)                     # module_utils/metal.py
    builders = list_builders(client, project_id, build_ids=["b1"])

Metal tags are plain strings; ours are ``key=value``. With build ids the API filters
(``?tag=nixforge-build-id=b1``, exact match); without, every device of the project is
listed and ours are picked here.
"""

from __future__ import annotations

import datetime
from typing import Any, Dict, Iterable, List, Mapping, Optional

from ansible_collections.nixforge.images.plugins.module_utils._discovery import builder_record, matches
from ansible_collections.nixforge.images.plugins.module_utils.common import TAG_BUILD_ID
from ansible_collections.nixforge.images.plugins.module_utils.metal import tag_dict

__all__ = ["GONE_STATES", "device_addresses", "list_builders", "plan_price", "record_from_device"]

# A device in these states no longer runs nor costs.
GONE_STATES = ("deprovisioning", "deleted")
DEFAULT_SSH_USER = "root"  # Metal installs the project's keys for root


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
        "equinix_metal",
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
    build_ids = list(build_ids or [])
    pipelines = list(pipelines or [])
    path = "projects/%s/devices" % project_id
    what = "Listing the builders of project %s" % project_id
    if build_ids:
        devices: List[Dict[str, Any]] = []
        for build_id in build_ids:
            devices.extend(client.paginate(path, "devices", what=what, tag="%s=%s" % (TAG_BUILD_ID, build_id)))
    else:
        devices = client.paginate(path, "devices", what=what)
    seen = set()
    records = []
    for device in devices:
        if device.get("id") in seen or device.get("state") in GONE_STATES:
            continue
        seen.add(device.get("id"))
        records.append(record_from_device(device, now))
    return [r for r in records if matches(r, build_ids, pipelines, expired)]

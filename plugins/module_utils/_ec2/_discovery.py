# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to this collection: read-only discovery of EC2 builders; no stable interface.
"""Read-only discovery of our EC2 builders (instances carrying ``nixforge-build-id``).

    client = ec2_client(params)                       # module_utils/_ec2/_client.py
    for builder in list_builders(client, "us-east-1", build_ids=["b1"]):
        print(builder["id"], builder["address"], builder["expired"])

Filtering by tag happens on the EC2 side (``Filters``), so an account with thousands
of other instances costs one page per 1000 of ours, not of theirs.
"""

from __future__ import annotations

import datetime
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

from ansible_collections.nixforge.images.plugins.module_utils._base._discovery import (
    builder_record,
    filter_builds,
    group_builds,
    matches,
    resource_record,
)
from ansible_collections.nixforge.images.plugins.module_utils._base._errors import NixforgeError
from ansible_collections.nixforge.images.plugins.module_utils._base._identity import (
    TAG_BUILD_ID,
    TAG_PIPELINE,
    format_timestamp,
)
from ansible_collections.nixforge.images.plugins.module_utils._ec2._client import filters, tag_dict

__all__ = [
    "LIVE_STATES",
    "find_fleets",
    "find_instances",
    "find_tagged",
    "instance_filters",
    "list_builders",
    "list_builds",
    "record_from_instance",
    "spot_prices",
]

# Instances that still cost money or may come back; terminated ones are only history.
LIVE_STATES = ("pending", "running", "stopping", "stopped")
DEFAULT_SSH_USER = "admin"  # Debian's cloud images (what ec2_spot_host boots)


def instance_filters(
    build_ids: Iterable[str] = (), pipelines: Iterable[str] = (), states: Iterable[str] = LIVE_STATES
) -> List[Dict[str, Any]]:
    spec: Dict[str, Any] = {"instance-state-name": list(states)}
    build_ids = list(build_ids or [])
    if build_ids:
        spec["tag:" + TAG_BUILD_ID] = build_ids
    else:
        spec["tag-key"] = TAG_BUILD_ID
    if pipelines:
        spec["tag:" + TAG_PIPELINE] = list(pipelines)
    return filters(spec)


def record_from_instance(
    instance: Mapping[str, Any],
    region: str,
    prices: Optional[Mapping[Tuple[str, str], float]] = None,
    now: Optional[datetime.datetime] = None,
) -> Dict[str, Any]:
    tags = tag_dict(instance.get("Tags"))
    placement = instance.get("Placement") or {}
    zone = placement.get("AvailabilityZone")
    lifecycle = instance.get("InstanceLifecycle") or "on-demand"
    price = None
    if lifecycle == "spot" and prices:
        price = prices.get((str(instance.get("InstanceType")), str(zone)))
    launched = instance.get("LaunchTime")
    ipv6 = None
    for interface in instance.get("NetworkInterfaces") or []:
        for address in interface.get("Ipv6Addresses") or []:
            ipv6 = ipv6 or address.get("Ipv6Address")
    return builder_record(
        "ec2",
        instance.get("InstanceId", ""),
        tags.get("Name") or str(instance.get("InstanceId", "")),
        tags,
        now=now,
        state=(instance.get("State") or {}).get("Name"),
        location=region,
        zone=zone,
        instance_type=instance.get("InstanceType"),
        architecture=instance.get("Architecture"),
        public_ipv4=instance.get("PublicIpAddress"),
        private_ipv4=instance.get("PrivateIpAddress"),
        public_ipv6=ipv6,
        price_per_hour=price,
        lifecycle=lifecycle,
        launched_at=format_timestamp(launched) if isinstance(launched, datetime.datetime) else launched,
        ssh_user=DEFAULT_SSH_USER,
    )


def spot_prices(client: Any, pairs: Iterable[Tuple[str, str]]) -> Dict[Tuple[str, str], float]:
    """Latest Linux spot price per (instance type, zone); a pair EC2 does not price is left out.

    A failed price look-up is not fatal: a builder without a price is still a builder.
    """
    result: Dict[Tuple[str, str], float] = {}
    for instance_type, zone in sorted(set(pairs)):
        try:
            history = client.call(
                "describe_spot_price_history",
                what="Reading the spot price of %s in %s" % (instance_type, zone),
                InstanceTypes=[instance_type],
                AvailabilityZone=zone,
                ProductDescriptions=["Linux/UNIX"],
                MaxResults=20,
            ).get("SpotPriceHistory", [])
        except NixforgeError:
            continue
        entries = [h for h in history if h.get("AvailabilityZone") in (None, zone) and h.get("SpotPrice")]
        if not entries:
            continue
        latest = max(entries, key=lambda h: str(h.get("Timestamp", "")))
        try:
            result[(instance_type, zone)] = float(latest["SpotPrice"])
        except (TypeError, ValueError):
            continue
    return result


def list_builders(
    client: Any,
    region: str,
    build_ids: Iterable[str] = (),
    pipelines: Iterable[str] = (),
    expired: Optional[bool] = None,
    states: Iterable[str] = LIVE_STATES,
    with_prices: bool = True,
    now: Optional[datetime.datetime] = None,
) -> List[Dict[str, Any]]:
    """Builder records of the instances of one region that carry our tags."""
    build_ids = list(build_ids or [])
    pipelines = list(pipelines or [])
    reservations = client.paginate(
        "describe_instances",
        "Reservations",
        what="Listing the builders in %s" % region,
        Filters=instance_filters(build_ids, pipelines, states),
    )
    instances = [i for r in reservations for i in r.get("Instances", [])]
    prices: Dict[Tuple[str, str], float] = {}
    if with_prices:
        pairs = [
            (str(i.get("InstanceType")), str((i.get("Placement") or {}).get("AvailabilityZone")))
            for i in instances
            if i.get("InstanceLifecycle") == "spot"
        ]
        prices = spot_prices(client, pairs)
    records = [record_from_instance(i, region, prices, now) for i in instances]
    return [r for r in records if matches(r, build_ids, pipelines, expired)]


# -- every resource of ours, grouped by build (for the reaper) ------------------------

# Spot requests that may still launch an instance (closed/cancelled/failed are history).
LIVE_SPOT_REQUEST_STATES = ("open", "active")


def tag_filter(build_ids: Iterable[str] = ()) -> Dict[str, Any]:
    build_ids = list(build_ids or [])
    return {"tag:" + TAG_BUILD_ID: build_ids} if build_ids else {"tag-key": TAG_BUILD_ID}


# kind -> (operation, result key, id key, name key) of the types found by the build tag
TAGGED_KINDS = {
    "launch_template": ("describe_launch_templates", "LaunchTemplates", "LaunchTemplateId", "LaunchTemplateName"),
    "security_group": ("describe_security_groups", "SecurityGroups", "GroupId", "GroupName"),
    "volume": ("describe_volumes", "Volumes", "VolumeId", ""),
    "key_pair": ("describe_key_pairs", "KeyPairs", "KeyPairId", "KeyName"),
}


def find_instances(
    client: Any, build_ids: Iterable[str] = (), states: Iterable[str] = LIVE_STATES, what: str = ""
) -> List[Dict[str, Any]]:
    """Instances carrying our build tag (one of ``build_ids`` when given) in ``states``."""
    reservations = client.paginate(
        "describe_instances",
        "Reservations",
        what=what or "Listing the instances",
        Filters=instance_filters(build_ids, (), states),
    )
    return [i for r in reservations for i in r.get("Instances", [])]


def find_fleets(client: Any, build_ids: Iterable[str] = (), what: str = "") -> List[Dict[str, Any]]:
    """Fleets not deleted that carry our build tag (one of ``build_ids`` when given)."""
    wanted = set(build_ids or [])
    # EC2 has no tag filter for fleets: every fleet is read, ours are picked by their tags
    fleets = client.paginate("describe_fleets", "Fleets", what=what or "Listing the EC2 fleets")
    out = []
    for fleet in fleets:
        build_id = tag_dict(fleet.get("Tags")).get(TAG_BUILD_ID)
        live = not str(fleet.get("FleetState", "")).startswith("deleted")
        if live and build_id and (not wanted or build_id in wanted):
            out.append(fleet)
    return out


def find_tagged(client: Any, kind: str, build_ids: Iterable[str] = (), what: str = "") -> List[Dict[str, Any]]:
    """Resources of ``kind`` (a key of ``TAGGED_KINDS``) carrying our build tag."""
    operation, key = TAGGED_KINDS[kind][:2]
    by_tag = filters(tag_filter(build_ids))
    what = what or "Listing the %ss" % kind.replace("_", " ")
    if kind == "key_pair":  # DescribeKeyPairs has no pages
        return client.call(operation, what=what, Filters=by_tag).get(key, [])
    return client.paginate(operation, key, what=what, Filters=by_tag)


def _resources(client: Any, region: str, build_ids: List[str]) -> List[Tuple[Dict[str, str], Dict[str, Any]]]:
    """``(tags, resource)`` of every tagged resource type ec2_spot_host creates, in removal order."""
    found: List[Tuple[Dict[str, str], Dict[str, Any]]] = []

    def add(kind: str, items: Iterable[Mapping[str, Any]], id_key: str, name_key: str = "", state: Any = None) -> None:
        for item in items:
            tags = tag_dict(item.get("Tags"))
            name = str(item.get(name_key) or tags.get("Name") or item.get(id_key))
            found.append((tags, resource_record(kind, item.get(id_key), name, region, state(item) if state else None)))

    fleets = find_fleets(client, build_ids, what="Listing the EC2 fleets in %s" % region)
    add("fleet", fleets, "FleetId", state=lambda f: f.get("FleetState"))
    requests = client.paginate(
        "describe_spot_instance_requests",
        "SpotInstanceRequests",
        what="Listing the spot requests in %s" % region,
        Filters=filters(tag_filter(build_ids)) + filters({"state": list(LIVE_SPOT_REQUEST_STATES)}),
    )
    add("spot_request", requests, "SpotInstanceRequestId", state=lambda r: r.get("State"))
    instances = find_instances(client, build_ids, what="Listing the instances in %s" % region)
    add("instance", instances, "InstanceId", state=lambda i: (i.get("State") or {}).get("Name"))
    for kind in ("launch_template", "security_group", "volume", "key_pair"):
        id_key, name_key = TAGGED_KINDS[kind][2:]
        what = "Listing the %ss in %s" % (kind.replace("_", " "), region)
        items = find_tagged(client, kind, build_ids, what=what)
        add(kind, items, id_key, name_key, state=(lambda v: v.get("State")) if kind == "volume" else None)
    return found


def list_builds(
    client: Any,
    region: str,
    build_ids: Iterable[str] = (),
    expired: Optional[bool] = None,
    now: Optional[datetime.datetime] = None,
) -> List[Dict[str, Any]]:
    """Build records (see ``_discovery.group_builds``) of everything of ours in one region."""
    build_ids = list(build_ids or [])
    builds = group_builds(_resources(client, region, build_ids), now)
    return filter_builds(builds, build_ids, expired)

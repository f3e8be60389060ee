# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to this collection: the builder record and filters every provider's discovery shares; no stable interface.
"""What the per-provider discovery modules share: one shape for a builder, and the filters.

Each provider's ``_discovery.py`` (``_ec2/``, ``_metal/``, ``_digitalocean/``, ``_b2/``)
only reads: it lists the machines that carry our build tags and turn each into a *builder record*, a plain dict
with the same keys whatever the provider (see :func:`builder_record`). The inventory
plugin, the reaper and the modules consume those records.
"""

from __future__ import annotations

import datetime
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

from ansible_collections.nixforge.images.plugins.module_utils._base._errors import UserInputError
from ansible_collections.nixforge.images.plugins.module_utils._base._identity import (
    TAG_BUILD_ID,
    TAG_EXPIRES_AT,
    TAG_PIPELINE,
    is_expired,
    parse_timestamp,
    utcnow,
)

__all__ = [
    "PROVIDERS",
    "builder_record",
    "filter_builds",
    "group_builds",
    "matches",
    "merge_builds",
    "normalize_architecture",
    "resource_record",
    "tagged_builders",
]

PROVIDERS = ("ec2", "metal", "digitalocean")

_ARCHITECTURES = {
    "arm64": "aarch64",
    "aarch64": "aarch64",
    "arm": "aarch64",
    "x86_64": "x86_64",
    "amd64": "x86_64",
    "x86-64": "x86_64",
    "i386": "i686",
}


def normalize_architecture(value: Optional[str]) -> Optional[str]:
    """Nix's names (``x86_64``, ``aarch64``) for what the providers call arm64, amd64..."""
    if not value:
        return None
    return _ARCHITECTURES.get(str(value).lower(), str(value).lower())


def builder_record(
    provider: str,
    resource_id: str,
    name: str,
    tags: Mapping[str, str],
    now: Optional[datetime.datetime] = None,
    **fields: Any,
) -> Dict[str, Any]:
    """One builder, the same keys for every provider.

    ``fields`` may set: state, location (region or metro), zone, instance_type,
    architecture, public_ipv4, private_ipv4, public_ipv6, price_per_hour, lifecycle
    (spot/on-demand), launched_at, ssh_user. Missing ones are None.
    """
    expires_at = tags.get(TAG_EXPIRES_AT) or None
    record: Dict[str, Any] = {
        "provider": provider,
        "id": str(resource_id),
        "name": name,
        "build_id": tags.get(TAG_BUILD_ID) or None,
        "pipeline": tags.get(TAG_PIPELINE) or None,
        "expires_at": expires_at,
        # an unreadable or missing expiry counts as expired: such a machine is a leak
        "expired": is_expired(expires_at, now or utcnow()),
        "tags": dict(tags),
    }
    for key in (
        "state",
        "location",
        "zone",
        "instance_type",
        "architecture",
        "public_ipv4",
        "private_ipv4",
        "public_ipv6",
        "price_per_hour",
        "lifecycle",
        "launched_at",
        "ssh_user",
    ):
        record[key] = fields.get(key)
    record["architecture"] = normalize_architecture(record["architecture"])
    record["address"] = record["public_ipv4"] or record["public_ipv6"] or record["private_ipv4"]
    return record


def matches(
    record: Mapping[str, Any],
    build_ids: Iterable[str] = (),
    pipelines: Iterable[str] = (),
    expired: Optional[bool] = None,
) -> bool:
    """Whether a builder passes the filters (an empty list filters nothing)."""
    build_ids = list(build_ids or [])
    pipelines = list(pipelines or [])
    if not record.get("build_id"):
        return False
    if build_ids and record.get("build_id") not in build_ids:
        return False
    if pipelines and record.get("pipeline") not in pipelines:
        return False
    if expired is not None and bool(record.get("expired")) != bool(expired):
        return False
    return True


def tagged_builders(
    list_machines: Callable[[Optional[str]], List[Dict[str, Any]]],
    to_record: Callable[[Mapping[str, Any], Optional[datetime.datetime]], Dict[str, Any]],
    gone: Tuple[str, Iterable[str]],
    build_ids: Iterable[str],
    pipelines: Iterable[str],
    expired: Optional[bool],
    now: Optional[datetime.datetime],
) -> List[Dict[str, Any]]:
    """Builder records (``to_record(machine, now)``) of the machines ``list_machines(build_id)``
    finds for each build id (``list_machines(None)``: all of them, when no build id is given)
    that pass the filters; a machine listed twice counts once, one whose ``gone[0]`` field is
    in ``gone[1]`` not at all."""
    build_ids = list(build_ids or [])
    pipelines = list(pipelines or [])
    state_key, gone_states = gone
    if build_ids:
        machines = [machine for build_id in build_ids for machine in list_machines(build_id)]
    else:
        machines = list_machines(None)
    seen = set()
    records = []
    for machine in machines:
        if machine.get("id") in seen or machine.get(state_key) in gone_states:
            continue
        seen.add(machine.get("id"))
        records.append(to_record(machine, now))
    return [r for r in records if matches(r, build_ids, pipelines, expired)]


# -- build records: every resource of ours, grouped by build --------------------------


def resource_record(
    kind: str,
    resource_id: Any,
    name: Optional[str] = None,
    location: Optional[str] = None,
    state: Optional[str] = None,
    product: bool = False,
) -> Dict[str, Any]:
    """One resource of a build. ``product``: the finished result of a build (a published
    image), which expiry-based reaping keeps; everything else is working material."""
    return {
        "type": kind,
        "id": str(resource_id),
        "name": name if name is not None else str(resource_id),
        "location": location,
        "state": state,
        "product": bool(product),
    }


def group_builds(
    found: Iterable[Tuple[Mapping[str, str], Dict[str, Any]]], now: Optional[datetime.datetime] = None
) -> List[Dict[str, Any]]:
    """Build records from ``(tags, resource_record)`` pairs, sorted by build id.

    A build's expiry is the latest readable ``nixforge-expires-at`` of its resources: a
    build lives as long as any part says so (a key found by its label only carries no
    expiry, while its device does). A build none of whose resources carries a readable
    expiry counts as expired (a leak). Resources without a build id are left out.
    """
    now = now or utcnow()
    builds: Dict[str, Dict[str, Any]] = {}
    for tags, resource in found:
        build_id = tags.get(TAG_BUILD_ID)
        if not build_id:
            continue
        build = builds.setdefault(
            build_id, {"build_id": build_id, "pipeline": None, "expires_at": None, "expired": True, "resources": []}
        )
        build["pipeline"] = build["pipeline"] or tags.get(TAG_PIPELINE) or None
        expiry = tags.get(TAG_EXPIRES_AT)
        if expiry and not _unreadable(expiry) and (build["expires_at"] is None or _later(expiry, build["expires_at"])):
            build["expires_at"] = expiry
        build["resources"].append(resource)
    for build in builds.values():
        build["expired"] = is_expired(build["expires_at"], now)
    return [builds[k] for k in sorted(builds)]


def _unreadable(value: str) -> bool:
    try:
        parse_timestamp(value)
    except UserInputError:
        return True
    return False


def _later(value: str, than: str) -> bool:
    return parse_timestamp(value) > parse_timestamp(than)


def filter_builds(
    builds: Iterable[Mapping[str, Any]], build_ids: Iterable[str] = (), expired: Optional[bool] = None
) -> List[Dict[str, Any]]:
    """Builds of these ids (none given: all) that are expired or not (None: both)."""
    wanted = list(build_ids or [])
    return [
        dict(b)
        for b in builds
        if (not wanted or b.get("build_id") in wanted) and (expired is None or bool(b.get("expired")) == expired)
    ]


def merge_builds(*lists: Iterable[Mapping[str, Any]], now: Optional[datetime.datetime] = None) -> List[Dict[str, Any]]:
    """One record per build id from build records of several locations (regions, projects...)."""
    pairs: List[Tuple[Mapping[str, str], Dict[str, Any]]] = []
    for builds in lists:
        for build in builds:
            tags = {TAG_BUILD_ID: build["build_id"]}
            if build.get("pipeline"):
                tags[TAG_PIPELINE] = build["pipeline"]
            if build.get("expires_at"):
                tags[TAG_EXPIRES_AT] = build["expires_at"]
            pairs.extend((tags, dict(r)) for r in build.get("resources") or [])
    return group_builds(pairs, now)

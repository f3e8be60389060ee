# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the per-provider discovery modules share: one shape for a builder, and the filters.

``_discovery_ec2``, ``_discovery_metal`` and ``_discovery_do`` only read: they list the
machines that carry our build tags and turn each into a *builder record*, a plain dict
with the same keys whatever the provider (see :func:`builder_record`). The inventory
plugin, the reaper and the modules consume those records.
"""

from __future__ import annotations

import datetime
from typing import Any, Dict, Iterable, List, Mapping, Optional

from ansible_collections.nixforge.images.plugins.module_utils.common import (
    TAG_BUILD_ID,
    TAG_EXPIRES_AT,
    TAG_PIPELINE,
    is_expired,
    utcnow,
)

__all__ = [
    "PROVIDERS",
    "builder_record",
    "matches",
    "normalize_architecture",
]

PROVIDERS = ("ec2", "equinix_metal", "digitalocean")

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


def filter_records(records: Iterable[Mapping[str, Any]], **criteria: Any) -> List[Dict[str, Any]]:
    return [dict(r) for r in records if matches(r, **criteria)]

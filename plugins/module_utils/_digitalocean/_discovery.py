# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to this collection: read-only discovery of DigitalOcean builders; no stable interface.
"""Read-only discovery of our DigitalOcean builders (droplets tagged ``nixforge-build-id:...``)
and of a build's images and keys. Removing droplets is ``_droplets.py``'s.

    client = digitalocean_client({"oauth_token": token, "api_url": url})   # _digitalocean/_client.py
    builders = list_builders(client, build_ids=["b1"])

DigitalOcean tags are bare names, so a build tag is written ``key:value`` there
(``nixforge-build-id:b1``); ``_digitalocean/_client.py`` converts both ways. Retries,
paging and error translation are that module's client's.
"""

from __future__ import annotations

import datetime
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

from ansible_collections.nixforge.images.plugins.module_utils._base._discovery import (
    builder_record,
    filter_builds,
    group_builds,
    resource_record,
    tagged_builders,
)
from ansible_collections.nixforge.images.plugins.module_utils._base._identity import TAG_BUILD_ID
from ansible_collections.nixforge.images.plugins.module_utils._digitalocean._client import tag_dict
from ansible_collections.nixforge.images.plugins.module_utils._digitalocean._keys import key_tags, list_keys

__all__ = ["droplets_of", "list_builders", "list_builds", "record_from_droplet"]

DEFAULT_SSH_USER = "root"
# Droplets in these states are gone or going.
GONE_STATES = ("archive",)


def _networks(droplet: Mapping[str, Any]) -> Dict[str, Optional[str]]:
    found: Dict[str, Optional[str]] = {"public_ipv4": None, "private_ipv4": None, "public_ipv6": None}
    networks = droplet.get("networks") or {}
    for entry in networks.get("v4") or []:
        key = "public_ipv4" if entry.get("type") == "public" else "private_ipv4"
        found[key] = found[key] or entry.get("ip_address")
    for entry in networks.get("v6") or []:
        if entry.get("type") == "public":
            found["public_ipv6"] = found["public_ipv6"] or entry.get("ip_address")
    return found


def _architecture(droplet: Mapping[str, Any]) -> str:
    # Every droplet size is x86_64 today; an image may say otherwise.
    image = droplet.get("image") or {}
    return str(image.get("architecture") or "x86_64")


def record_from_droplet(droplet: Mapping[str, Any], now: Optional[datetime.datetime] = None) -> Dict[str, Any]:
    tags = tag_dict(droplet.get("tags"))
    size = droplet.get("size") or {}
    price = size.get("price_hourly")
    return builder_record(
        "digitalocean",
        str(droplet.get("id", "")),
        droplet.get("name") or str(droplet.get("id", "")),
        tags,
        now=now,
        state=droplet.get("status"),
        location=(droplet.get("region") or {}).get("slug"),
        instance_type=droplet.get("size_slug") or size.get("slug"),
        architecture=_architecture(droplet),
        price_per_hour=float(price) if price is not None else None,
        lifecycle="on-demand",
        launched_at=droplet.get("created_at"),
        ssh_user=DEFAULT_SSH_USER,
        **_networks(droplet),
    )


def droplets_of(client: Any, tag_name: Optional[str] = None) -> List[Dict[str, Any]]:
    """Every droplet (with ``tag_name``: only those carrying it), page by page."""
    return client.paginate("droplets", "droplets", "Listing the DigitalOcean droplets", tag_name=tag_name)


def list_builders(
    client: Any,
    build_ids: Iterable[str] = (),
    pipelines: Iterable[str] = (),
    expired: Optional[bool] = None,
    now: Optional[datetime.datetime] = None,
) -> List[Dict[str, Any]]:
    """Builder records of the account's droplets that carry our tags."""

    def droplets(build_id: Optional[str]) -> List[Dict[str, Any]]:
        return droplets_of(client, None if build_id is None else "%s:%s" % (TAG_BUILD_ID, build_id))

    return tagged_builders(droplets, record_from_droplet, ("status", GONE_STATES), build_ids, pipelines, expired, now)


# -- every resource of ours, grouped by build (for the reaper) ------------------------

# A custom image in this state is the finished product of a build, not a leftover:
# expiry-based reaping keeps it (only a build id named explicitly removes it).
PRODUCT_IMAGE_STATUS = "available"


def list_builds(
    client: Any,
    build_ids: Iterable[str] = (),
    expired: Optional[bool] = None,
    now: Optional[datetime.datetime] = None,
) -> List[Dict[str, Any]]:
    """Build records (see ``_discovery.group_builds``) of the account's tagged custom images
    and droplets, and of its SSH keys named for a build (``_digitalocean/_keys``). Images that
    are ``available`` are marked ``product``."""
    build_ids = list(build_ids or [])
    found: List[Tuple[Dict[str, str], Dict[str, Any]]] = []
    for image in client.list_images():
        status = image.get("status")
        if status == "deleted":
            continue
        location = ",".join(image.get("regions") or []) or None
        found.append(
            (
                tag_dict(image.get("tags")),
                resource_record(
                    "image", image.get("id"), image.get("name"), location, status, status == PRODUCT_IMAGE_STATUS
                ),
            )
        )
    for droplet in droplets_of(client):
        if droplet.get("status") in GONE_STATES:
            continue
        region = (droplet.get("region") or {}).get("slug")
        found.append(
            (
                tag_dict(droplet.get("tags")),
                resource_record("droplet", droplet.get("id"), droplet.get("name"), region, droplet.get("status")),
            )
        )
    for key in list_keys(client):
        tags = key_tags(key)
        if tags:
            found.append((tags, resource_record("ssh_key", key.get("id"), key.get("name"), None, "registered")))
    return filter_builds(group_builds(found, now), build_ids, expired)

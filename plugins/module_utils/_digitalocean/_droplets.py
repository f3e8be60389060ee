# -*- coding: utf-8 -*-
# Private to this collection: DigitalOcean droplet creation and sizes; no stable interface.
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Droplets the collection creates (the boot check's), and the choice of their size.

The size is the cheapest one offered in the region whose disk holds the image
(``min_disk_size``), read from ``GET /v2/sizes``; an endpoint without that list (an older
compatible API) falls back to ``SIZE_TABLE``, DigitalOcean's Basic and general-purpose
prices as published in 2026-12 (docs/boot-check.md says where they come from).
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Optional

from ansible_collections.nixforge.images.plugins.module_utils._base._errors import UserInputError
from ansible_collections.nixforge.images.plugins.module_utils._base._identity import TAG_BUILD_ID
from ansible_collections.nixforge.images.plugins.module_utils._digitalocean._discovery import GONE_STATES, droplets_of

# slug -> (disk GB, USD per hour): fallback only; the API's own list wins.
SIZE_TABLE: Dict[str, tuple] = {
    "s-1vcpu-512mb-10gb": (10, 0.00595),
    "s-1vcpu-1gb": (25, 0.00893),
    "s-1vcpu-2gb": (50, 0.01786),
    "s-2vcpu-2gb": (60, 0.02679),
    "s-2vcpu-4gb": (80, 0.03571),
    "s-4vcpu-8gb": (160, 0.07143),
    "s-8vcpu-16gb": (320, 0.14286),
    "c-2": (25, 0.0625),
    "g-2vcpu-8gb": (25, 0.09375),
    "c-4": (50, 0.125),
    "m-2vcpu-16gb": (50, 0.125),
}
LIVE_STATES = ("new", "active", "off")


def table_sizes() -> List[Dict[str, Any]]:
    return [
        {"slug": slug, "disk": disk, "price_hourly": price, "available": True, "regions": None}
        for slug, (disk, price) in SIZE_TABLE.items()
    ]


def list_sizes(client: Any) -> List[Dict[str, Any]]:
    """The account's sizes, or the table when the endpoint has no size list (404)."""
    data = client.call("sizes", params={"per_page": 200}, what="Listing the droplet sizes", missing_ok=True)
    sizes = (data or {}).get("sizes") if data else None
    return list(sizes) if sizes else table_sizes()


def cheapest_size(sizes: Iterable[Mapping[str, Any]], region: str, min_disk: int) -> Dict[str, Any]:
    """The cheapest available size in ``region`` whose disk is at least ``min_disk`` GB."""
    fitting = [
        dict(s)
        for s in sizes
        if s.get("available", True)
        and (s.get("regions") is None or region in (s.get("regions") or []))
        and int(s.get("disk") or 0) >= int(min_disk or 0)
        and s.get("price_hourly") is not None
    ]
    if not fitting:
        raise UserInputError(
            "no droplet size in %s has a disk of %s GB or more" % (region, min_disk),
            hint="Give a size slug in 'size' (do_image_publish_boot_size), or another region",
            parameter="size",
        )
    return min(fitting, key=lambda s: (float(s["price_hourly"]), int(s.get("disk") or 0), str(s.get("slug"))))


def size_price(sizes: Iterable[Mapping[str, Any]], slug: str) -> Optional[float]:
    for size in sizes:
        if size.get("slug") == slug and size.get("price_hourly") is not None:
            return float(size["price_hourly"])
    return None


def droplet_body(params: Mapping[str, Any], tags: List[str], ssh_keys: List[Any], size: str) -> Dict[str, Any]:
    """The ``POST /v2/droplets`` body; the image is an id (custom image) or a slug."""
    image: Any = params["image"]
    if isinstance(image, str) and image.isdigit():
        image = int(image)
    body: Dict[str, Any] = {
        "name": params["name"],
        "region": params["region"],
        "size": size,
        "image": image,
        "ssh_keys": ssh_keys,
        "tags": tags,
        "ipv6": False,
        "monitoring": False,
    }
    if params.get("user_data"):
        body["user_data"] = params["user_data"]
    return body


def get_droplet(client: Any, droplet_id: Any) -> Optional[Dict[str, Any]]:
    data = client.call("droplets/%s" % droplet_id, what="Reading droplet %s" % droplet_id, missing_ok=True)
    return None if data is None else data.get("droplet")


def public_ipv4(droplet: Mapping[str, Any]) -> Optional[str]:
    for entry in (droplet.get("networks") or {}).get("v4") or []:
        if entry.get("type") == "public" and entry.get("ip_address"):
            return str(entry["ip_address"])
    return None


def region_slug(droplet: Mapping[str, Any]) -> Optional[str]:
    region = droplet.get("region")
    return region.get("slug") if isinstance(region, Mapping) else region


def droplet_view(droplet: Mapping[str, Any], price_hourly: Optional[float] = None) -> Dict[str, Any]:
    """What the modules return about a droplet."""
    size = droplet.get("size") or {}
    price = size.get("price_hourly", price_hourly)
    return {
        "id": str(droplet.get("id")),
        "name": droplet.get("name"),
        "status": droplet.get("status"),
        "region": region_slug(droplet),
        "size": droplet.get("size_slug") or size.get("slug"),
        "image": (droplet.get("image") or {}).get("id"),
        "public_ipv4": public_ipv4(droplet),
        "price_hourly": float(price) if price is not None else None,
        "created_at": droplet.get("created_at"),
        "tags": list(droplet.get("tags") or []),
    }


# -- removal of a build's droplets (do_droplet state=absent, the reaper's) -------------


def build_droplets(client: Any, build_id: str) -> List[Dict[str, Any]]:
    """The live droplets tagged with ``build_id``."""
    tag = "%s:%s" % (TAG_BUILD_ID, build_id)
    return [d for d in droplets_of(client, tag) if d.get("status") not in GONE_STATES]


def delete_droplet(client: Any, droplet_id: Any) -> bool:
    """Delete one droplet; False when it was gone already (a 404 is not an error here)."""
    answer = client.call("droplets/%s" % droplet_id, "DELETE", what="Deleting droplet %s" % droplet_id, missing_ok=True)
    return answer is not None


def droplets_gone(client: Any, build_id: str, ids: Iterable[Any]) -> bool:
    """Whether none of ``ids`` is listed any more under the build's tag."""
    wanted = {str(i) for i in ids}
    return not [d for d in build_droplets(client, build_id) if str(d.get("id")) in wanted]

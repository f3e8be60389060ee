"""Droplets of the DigitalOcean emulator: create, list (with `tag_name`), read, delete by id
and delete by tag, as the v2 API does them.

Nothing of ours creates droplets; they exist here so that the reaper and the inventory
plugin meet droplets tagged like a build's (left by another tool or an older version).
A droplet is `new`, then `active` after `DROPLET_BOOT_SECONDS`; its address comes from
the documentation range (no sandbox host answers on it).
"""

from __future__ import annotations

import datetime as dt
import itertools
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from . import catalog as cat

DROPLET_BOOT_SECONDS = 2.0
SIZE_SPECS = {  # slug -> (memory MB, vcpus, disk GB, USD per hour)
    "s-1vcpu-512mb-10gb": (512, 1, 10, 0.00595),
    "s-1vcpu-1gb": (1024, 1, 25, 0.00893),
    "s-2vcpu-4gb": (4096, 2, 80, 0.03571),
    "c-4": (8192, 4, 50, 0.125),
}


@dataclass
class Droplet:
    id: int
    name: str
    region: str
    size: str
    image: str
    tags: list[str]
    created: float
    address: str
    removed: bool = field(default=False)

    def status(self, now: float) -> str:
        return "active" if now - self.created >= DROPLET_BOOT_SECONDS else "new"

    def view(self, now: float) -> dict[str, Any]:
        memory, vcpus, disk, hourly = SIZE_SPECS[self.size]
        created = dt.datetime.fromtimestamp(self.created, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "id": self.id,
            "name": self.name,
            "memory": memory,
            "vcpus": vcpus,
            "disk": disk,
            "locked": False,
            "status": self.status(now),
            "created_at": created,
            "features": [],
            "backup_ids": [],
            "next_backup_window": None,
            "snapshot_ids": [],
            "image": {"slug": self.image, "distribution": "Debian", "architecture": "x86_64"},
            "volume_ids": [],
            "size": {
                "slug": self.size,
                "memory": memory,
                "vcpus": vcpus,
                "disk": disk,
                "transfer": 1.0,
                "price_monthly": round(hourly * 672, 2),
                "price_hourly": hourly,
                "regions": [self.region],
                "available": True,
                "description": "Basic",
            },
            "size_slug": self.size,
            "networks": {
                "v4": [{"ip_address": self.address, "netmask": "255.255.255.0", "gateway": "", "type": "public"}],
                "v6": [],  # python-digitalocean reads the key whether or not IPv6 is on
            },
            "region": cat.region_obj(self.region),
            "tags": list(self.tags),
            "vpc_uuid": "",
        }


class Droplets:
    """The account's droplets. `error` builds the API's error (an ApiError of api.py)."""

    def __init__(self, clock: Callable[[], float], error: Callable[[int, str], Exception]) -> None:
        self.clock = clock
        self.error = error
        self.lock = threading.RLock()
        self.items: dict[int, Droplet] = {}
        self.ids = itertools.count(390000001)

    def reset(self) -> None:
        with self.lock:
            self.items.clear()

    def live(self, tag: str | None = None) -> list[Droplet]:
        with self.lock:
            return [d for d in sorted(self.items.values(), key=lambda d: d.id) if tag is None or tag in d.tags]

    def views(self, tag: str | None = None) -> list[dict[str, Any]]:
        now = self.clock()
        return [d.view(now) for d in self.live(tag)]

    def create(self, body: Any, tags: list[str]) -> Droplet:
        if not isinstance(body, dict):
            raise self.error(400, "error parsing request body")
        for key in ("name", "region", "size", "image"):
            if not body.get(key):
                raise self.error(422, f"{key} is required")
        if body["region"] not in cat.REGIONS:
            raise self.error(422, "You specified an invalid region for Droplet creation.")
        if body["size"] not in SIZE_SPECS:
            raise self.error(422, "You specified an invalid size for Droplet creation.")
        ident = next(self.ids)
        droplet = Droplet(
            id=ident,
            name=str(body["name"]),
            region=body["region"],
            size=body["size"],
            image=str(body["image"]),
            tags=tags,
            created=self.clock(),
            address="192.0.2.%d" % (ident % 250 + 1),
        )
        with self.lock:
            self.items[ident] = droplet
        return droplet

    def get(self, ident: str) -> Droplet:
        with self.lock:
            droplet = self.items.get(int(ident))
        if droplet is None:
            raise self.error(404, "The resource you were accessing could not be found.")
        return droplet

    def delete(self, ident: str) -> None:
        droplet = self.get(ident)
        with self.lock:
            droplet.removed = True
            self.items.pop(droplet.id, None)

    def delete_tagged(self, tag: str) -> int:
        gone = self.live(tag)
        with self.lock:
            for droplet in gone:
                droplet.removed = True
                self.items.pop(droplet.id, None)
        return len(gone)

    def resources(self) -> list[dict[str, Any]]:
        now = self.clock()
        return [
            {
                "type": "do_droplet",
                "id": d.id,
                "name": d.name,
                "status": d.status(now),
                "region": d.region,
                "size": d.size,
                "tags": list(d.tags),
            }
            for d in self.live()
        ]

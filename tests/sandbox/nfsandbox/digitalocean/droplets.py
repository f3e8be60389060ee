"""Droplets of the DigitalOcean emulator: create, list (with `tag_name`), read, delete by id
and delete by tag, as the v2 API does them.

A droplet of a custom image really runs (machine.py): its image boots under QEMU in a
network namespace of the sandbox instance, with a metadata service giving it the
account keys named at create, its hostname and its user data. It is `new` until QEMU
runs, then `active` (whether or not the guest ever boots, as on DigitalOcean); its
public address (`networks.v4`, shown once active) is where QEMU forwards TCP 22 to the
guest. If QEMU ends by itself (a poweroff in the guest) the droplet is `off`.

A droplet of a public image (`debian-12-x64`, ...) runs nothing: it becomes `active`
after `DROPLET_BOOT_SECONDS` with an address of the documentation range (no sandbox
host answers there). Without a sandbox (unit tests) custom images behave the same way.

Create checks what DigitalOcean checks: name, region (available), size (offered in the
region), image (exists, available, in the region, `min_disk_size` fits the size's
disk), ssh_keys (on the account), user_data (a string up to 64 KiB).
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import catalog as cat
from .keys import Keys, SSHKey
from .machine import Gone, Machine, Machines, MachineSpec

log = logging.getLogger("nfsandbox.digitalocean.droplets")

DROPLET_BOOT_SECONDS = 2.0
USER_DATA_MAX = 64 * 1024
HOSTNAME_RE = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9.\-]{0,253}[a-zA-Z0-9])?$")
NOT_FOUND = "The resource you were accessing could not be found."
SIZE_SPECS = {  # slug -> (memory MB, vcpus, disk GB, USD per hour)
    "s-1vcpu-512mb-10gb": (512, 1, 10, 0.00595),
    "s-1vcpu-1gb": (1024, 1, 25, 0.00893),
    "s-2vcpu-4gb": (4096, 2, 80, 0.03571),
    "c-4": (8192, 4, 50, 0.125),
}


@dataclass
class ImageRef:
    """What a droplet needs of its image; `path` only for a custom image's stored bytes."""

    view: dict[str, Any]
    status: str
    regions: list[str]
    min_disk_size: int | None
    path: Path | None = None
    format: str | None = None
    compression: str | None = None


@dataclass
class Droplet:
    id: int
    name: str
    region: str
    size: str
    image: ImageRef
    tags: list[str]
    created: float
    address: str
    keys: list[SSHKey] = field(default_factory=list)
    user_data: str | None = None
    machine: Machine | None = None
    state: str = "new"  # for a droplet with a machine; others go by the clock
    error: str | None = None
    removed: bool = False

    def status(self, now: float) -> str:
        if self.machine is not None:
            return self.state
        return "active" if now - self.created >= DROPLET_BOOT_SECONDS else "new"

    def view(self, now: float) -> dict[str, Any]:
        memory, vcpus, disk, hourly = SIZE_SPECS[self.size]
        created = dt.datetime.fromtimestamp(self.created, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        status = self.status(now)
        return {
            "id": self.id,
            "name": self.name,
            "memory": memory,
            "vcpus": vcpus,
            "disk": disk,
            "locked": False,
            "status": status,
            "created_at": created,
            "features": ["droplet_agent"],
            "backup_ids": [],
            "next_backup_window": None,
            "snapshot_ids": [],
            "image": dict(self.image.view),
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
                # as on DigitalOcean, a new droplet has no address yet
                "v4": [] if status == "new" else [self._public_v4()],
                "v6": [],  # python-digitalocean reads the key whether or not IPv6 is on
            },
            "region": cat.region_obj(self.region),
            "tags": list(self.tags),
            "vpc_uuid": "",
        }

    def _public_v4(self) -> dict[str, str]:
        if self.machine is not None:
            m = self.machine
            return {"ip_address": m.address, "netmask": m.netmask, "gateway": m.gateway, "type": "public"}
        return {"ip_address": self.address, "netmask": "255.255.255.0", "gateway": "", "type": "public"}


def size_slugs() -> list[str]:
    return list(SIZE_SPECS)


class Droplets:
    """The account's droplets. `error` builds the API's error (an ApiError of api.py);
    `find_image(value)` gives the ImageRef of an image id or slug (None: no such image);
    `machines` boots custom images (None: nothing boots)."""

    def __init__(
        self,
        clock: Callable[[], float],
        error: Callable[[int, str], Exception],
        find_image: Callable[[Any], ImageRef | None] | None = None,
        keys: Keys | None = None,
        machines: Machines | None = None,
    ) -> None:
        self.clock = clock
        self.error = error
        self.find_image = find_image or (lambda value: None)
        self.keys = keys or Keys(error)
        self.machines = machines
        self.lock = threading.RLock()
        self.items: dict[int, Droplet] = {}
        self.ids = itertools.count(390000001)

    def reset(self) -> None:
        with self.lock:
            gone = list(self.items.values())
            self.items.clear()
        self._stop(gone)

    shutdown = reset

    def live(self, tag: str | None = None) -> list[Droplet]:
        with self.lock:
            return [d for d in sorted(self.items.values(), key=lambda d: d.id) if tag is None or tag in d.tags]

    def views(self, tag: str | None = None) -> list[dict[str, Any]]:
        now = self.clock()
        return [d.view(now) for d in self.live(tag)]

    # -- create ------------------------------------------------------------------------
    def _validate(self, body: Any) -> tuple[ImageRef, list[SSHKey], str | None]:
        if not isinstance(body, dict):
            raise self.error(400, "error parsing request body")
        for key in ("name", "region", "size", "image"):
            if not body.get(key):
                raise self.error(422, f"{key} is required")
        if not isinstance(body["name"], str) or not HOSTNAME_RE.match(body["name"]):
            raise self.error(422, "Only valid hostname characters are allowed. (a-z, A-Z, 0-9, . and -)")
        region, size = body["region"], body["size"]
        if region not in cat.REGIONS or not cat.REGIONS[region][1]:
            raise self.error(422, "You specified an invalid region for Droplet creation.")
        if size not in SIZE_SPECS or size not in cat.region_obj(region)["sizes"]:
            raise self.error(422, "You specified an invalid size for Droplet creation.")
        image = self.find_image(body["image"])
        if image is None or image.status != "available":
            raise self.error(422, "You specified an invalid image for Droplet creation.")
        if region not in image.regions:
            raise self.error(422, f"The image is not available in the region {region}; transfer it there first.")
        disk = SIZE_SPECS[size][2]
        if image.min_disk_size and image.min_disk_size > disk:
            raise self.error(
                422,
                f"The size {size} has a {disk} GB disk, smaller than the image's minimum disk size "
                f"of {image.min_disk_size} GB. Please choose a larger size.",
            )
        keys = self.keys.resolve(body.get("ssh_keys"))
        user_data = body.get("user_data")
        if user_data is not None and not isinstance(user_data, str):
            raise self.error(422, "user_data must be a string")
        if user_data is not None and len(user_data.encode()) > USER_DATA_MAX:
            raise self.error(422, f"user_data is limited to {USER_DATA_MAX} bytes")
        return image, keys, user_data

    def create(self, body: Any, tags: list[str]) -> Droplet:
        image, keys, user_data = self._validate(body)
        ident = next(self.ids)
        droplet = Droplet(
            id=ident,
            name=body["name"],
            region=body["region"],
            size=body["size"],
            image=image,
            tags=tags,
            created=self.clock(),
            address="192.0.2.%d" % (ident % 250 + 1),
            keys=keys,
            user_data=user_data,
        )
        if image.path is not None and self.machines is not None:
            droplet.machine = self._machine(droplet)
        with self.lock:
            self.items[ident] = droplet
        if droplet.machine is not None:
            threading.Thread(target=self._run, args=(droplet,), name=f"do-droplet-{ident}", daemon=True).start()
        return droplet

    def _machine(self, droplet: Droplet) -> Machine:
        memory, _vcpus, disk, _hourly = SIZE_SPECS[droplet.size]
        image = droplet.image
        assert self.machines is not None and image.path is not None and image.format is not None
        spec = MachineSpec(
            droplet_id=droplet.id,
            name=droplet.name,
            region=droplet.region,
            memory_mb=memory,
            disk_gb=disk,
            image_path=image.path,
            image_format=image.format,
            image_compression=image.compression,
            public_keys=[k.public_key for k in droplet.keys],
            user_data=droplet.user_data,
            tags=list(droplet.tags),
        )
        try:
            return self.machines.create(spec)
        except RuntimeError as exc:  # QEMU missing, no address left: the sandbox's problem, said plainly
            raise self.error(500, f"sandbox: cannot boot droplets: {exc}") from None

    def _run(self, droplet: Droplet) -> None:
        """Boot, then watch: `active` once QEMU runs, `off` if it ends by itself."""
        machine = droplet.machine
        assert machine is not None
        try:
            machine.boot()
        except Gone:
            return
        except Exception as exc:
            log.exception("droplet %s: boot failed", droplet.id)
            self._off(droplet, f"{type(exc).__name__}: {exc}")
            return
        with self.lock:
            if not droplet.removed:
                droplet.state = "active"
        code = machine.wait()
        if not machine.closed:
            log.info("droplet %s: QEMU exited by itself (%s); droplet off", droplet.id, code)
            self._off(droplet, None)

    def _off(self, droplet: Droplet, error: str | None) -> None:
        assert droplet.machine is not None
        droplet.machine.stop()
        with self.lock:
            droplet.state, droplet.error = "off", error

    # -- read, delete ------------------------------------------------------------------
    def get(self, ident: str) -> Droplet:
        with self.lock:
            droplet = self.items.get(int(ident))
        if droplet is None:
            raise self.error(404, NOT_FOUND)
        return droplet

    def delete(self, ident: str) -> None:
        droplet = self.get(ident)
        with self.lock:
            droplet.removed = True
            self.items.pop(droplet.id, None)
        self._stop([droplet])

    def delete_tagged(self, tag: str) -> int:
        gone = self.live(tag)
        with self.lock:
            for droplet in gone:
                droplet.removed = True
                self.items.pop(droplet.id, None)
        self._stop(gone)
        return len(gone)

    @staticmethod
    def _stop(droplets: list[Droplet]) -> None:
        for droplet in droplets:
            droplet.removed = True
            if droplet.machine is not None:
                droplet.machine.stop()

    # -- what the sandbox shows ---------------------------------------------------------
    def debug(self) -> list[dict[str, Any]]:
        """Per droplet: status, error and the machine's view (console log path, PIDs)."""
        now = self.clock()
        out = []
        for d in self.live():
            entry: dict[str, Any] = {"id": d.id, "name": d.name, "status": d.status(now), "error": d.error}
            if d.machine is not None:
                entry.update(d.machine.view())
            out.append(entry)
        return out

    def resources(self) -> list[dict[str, Any]]:
        now = self.clock()
        out: list[dict[str, Any]] = []
        for d in self.live():
            entry = {
                "type": "do_droplet",
                "id": d.id,
                "name": d.name,
                "status": d.status(now),
                "region": d.region,
                "size": d.size,
                "tags": list(d.tags),
            }
            if d.machine is not None:
                entry.update(d.machine.view(), error=d.error)
            out.append(entry)
        if self.machines is not None:
            # from the PID records on disk: a QEMU whose droplet is gone still shows up
            out += [
                {"type": "do_droplet_process", "id": r["pid"], "name": r["name"]}
                for r in self.machines.records.live_pids()
                if r["name"].startswith("droplet")
            ]
        return out + self.keys.resources()  # the account keys droplets are given

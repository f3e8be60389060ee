"""Static data of the sandbox's EC2: the Debian AMI catalogue and instance prices.

The catalogue imitates what Debian's cloud team publishes from account 136693071363:
one image per release, architecture and build, named ``debian-<major>-<arch>-<date>-<build>``
(plus ``debian-12-backports-...`` images, so that a careless ``debian-12-*`` name filter
picks the wrong image here exactly as it would on AWS). Several builds per release, so that
"take the newest" has to be done right. Image ids are derived from the names, so they are
stable from one sandbox run to the next.

Beside Debian's images, account PREBAKED_OWNER shares ``nixforge-builder-debian-13-<arch>-<date>``:
Debian 13 with Nix already installed, as a user's own builder AMI baked once with Packer. A
host booted from it runs the ``trixie+nix`` base image (nfsandbox.hosts.rootfs.VARIANTS),
where nix_bootstrap finds every package installed. Tests that are not about installing Nix
use it (builder_host_ec2_image_name/_owner) and save the package installation.

Prices are plausible us-east-1 figures (USD per hour, checked against public price lists in
2026); they matter only relative to each other (lowest-price allocation, max-price checks,
the playbooks' cost summary). Types missing from the tables get a price from their vCPU
count, never moto's canned ``0.00001``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Any

DEBIAN_OWNER = "136693071363"
# An account of the user's that publishes pre-baked builder images (shared, not public).
PREBAKED_OWNER = "111122223333"
PREBAKED_PREFIX = "nixforge-builder-"
# (Debian major, date) of the pre-baked images
_PREBAKED = [(13, "20261201")]

# major -> (codename, [(date, build), ...] oldest first)
_RELEASES: dict[int, tuple[str, list[tuple[str, str]]]] = {
    10: ("buster", [("20231013", "1532"), ("20240201", "1647"), ("20240703", "1797")]),
    12: ("bookworm", [("20250428", "2096"), ("20251006", "2257"), ("20260112", "2359"), ("20260915", "2555")]),
    13: ("trixie", [("20250814", "2204"), ("20251117", "2299"), ("20260310", "2421"), ("20261020", "2622")]),
}
_BACKPORTS = {12}
_ARCHES = {"amd64": "x86_64", "arm64": "arm64"}

SUITES = {major: codename for major, (codename, _builds) in _RELEASES.items()}


def _ami_id(name: str) -> str:
    return "ami-" + hashlib.sha256(name.encode()).hexdigest()[:17]


def _ami(name: str, description: str, owner: str, aws_arch: str, creation_date: str) -> dict[str, Any]:
    """One catalogue entry (keyword arguments of moto's ``Ami``): an EBS-backed HVM image."""
    return {
        "ami_id": _ami_id(name),
        "name": name,
        "description": description,
        "owner_id": owner,
        "public": True,
        "state": "available",
        "image_type": "machine",
        "image_location": "%s/%s" % (owner, name),
        "architecture": aws_arch,
        "virtualization_type": "hvm",
        "hypervisor": "xen",
        "root_device_type": "ebs",
        "root_device_name": "/dev/xvda",
        "sriov": "simple",
        "boot_mode": "uefi-preferred" if aws_arch == "x86_64" else "uefi",
        "creation_date": creation_date,
    }


def debian_amis() -> list[dict[str, Any]]:
    """The catalogue in the format of moto's ``MOTO_AMIS_PATH`` file (keyword arguments of ``Ami``)."""
    amis = []
    for major, (_codename, builds) in sorted(_RELEASES.items()):
        flavours = [""] + (["backports-"] if major in _BACKPORTS else [])
        for date, build in builds:
            for flavour in flavours:
                for deb_arch, aws_arch in _ARCHES.items():
                    name = "debian-%d-%s%s-%s-%s" % (major, flavour, deb_arch, date, build)
                    description = "Debian %d%s (%s-%s)" % (major, " backports" if flavour else "", date, build)
                    created = "%s-%s-%sT%02d:%02d:00.000Z" % (
                        date[:4],
                        date[4:6],
                        date[6:],
                        int(build) % 24,
                        int(build) % 60,
                    )
                    amis.append(_ami(name, description, DEBIAN_OWNER, aws_arch, created))
    return amis


def prebaked_amis() -> list[dict[str, Any]]:
    """The pre-baked builder images (Debian + Nix), in the same format."""
    amis = []
    for major, date in _PREBAKED:
        for deb_arch, aws_arch in _ARCHES.items():
            name = "%sdebian-%d-%s-%s" % (PREBAKED_PREFIX, major, deb_arch, date)
            description = "Debian %d with Nix (nix-bin, multi-user) preinstalled, baked %s" % (major, date)
            created = "%s-%s-%sT12:00:00.000Z" % (date[:4], date[4:6], date[6:])
            amis.append(_ami(name, description, PREBAKED_OWNER, aws_arch, created))
    return amis


def amis() -> list[dict[str, Any]]:
    """Every AMI of the sandbox's EC2: Debian's and the pre-baked builder images."""
    return debian_amis() + prebaked_amis()


def write_catalogue(directory: str | None = None) -> str:
    """Write the catalogue as JSON (for ``MOTO_AMIS_PATH``) and return the file's path."""
    fd, path = tempfile.mkstemp(prefix="debian-amis-", suffix=".json", dir=directory)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(amis(), f, indent=1)
    return path


def suite_of_image_name(name: str | None) -> str | None:
    """``debian-12-arm64-...`` -> ``bookworm``, ``nixforge-builder-debian-12-...`` ->
    ``bookworm+nix``; None for other images."""
    name = name or ""
    variant = ""
    if name.startswith(PREBAKED_PREFIX):
        name, variant = name[len(PREBAKED_PREFIX) :], "+nix"
    parts = name.split("-")
    if len(parts) > 2 and parts[0] == "debian" and parts[1].isdigit() and int(parts[1]) in SUITES:
        return SUITES[int(parts[1])] + variant
    return None


# --- prices ---------------------------------------------------------------------------

# On-demand Linux prices, us-east-1, USD/hour.
ON_DEMAND = {
    "a1.2xlarge": 0.204,
    "a1.4xlarge": 0.408,
    "a1.metal": 0.408,
    "c6g.2xlarge": 0.272,
    "c6g.metal": 2.176,
    "c7g.2xlarge": 0.289,
    "c7g.metal": 2.32,
    "m6g.2xlarge": 0.308,
    "m7g.2xlarge": 0.3264,
    "m7g.metal": 2.611,
    "t4g.micro": 0.0084,
    "t4g.small": 0.0168,
    "c5.metal": 4.08,
    "c5d.metal": 4.608,
    "c5n.metal": 3.888,
    "m5.metal": 4.608,
    "m5d.metal": 5.424,
    "m5zn.metal": 3.9641,
    "c6i.metal": 5.44,
    "m6i.metal": 6.144,
    "r5.metal": 6.048,
    "i3.metal": 4.992,
    "c7i.metal-24xl": 4.284,
    "c8i.2xlarge": 0.3749,
    "m8i.2xlarge": 0.4234,
    "r8i.2xlarge": 0.5557,
    "t3.micro": 0.0104,
    "t3.small": 0.0208,
    "t3.medium": 0.0416,
    "m5.large": 0.096,
}

# Usual spot discount of the types above (spot = on-demand * fraction, before the
# per-zone variation below).
_SPOT_FRACTION = {
    "a1.2xlarge": 0.42,
    "c6g.2xlarge": 0.41,
    "c7g.2xlarge": 0.44,
    "m7g.2xlarge": 0.40,
    "c5.metal": 0.38,
    "m5.metal": 0.36,
}


def _vcpus_and_arch(instance_type: str) -> tuple[int, str]:
    try:
        from moto.ec2.models.instance_types import INSTANCE_TYPES
    except ImportError:  # pragma: no cover - moto is a test dependency
        return 2, "x86_64"
    info = INSTANCE_TYPES.get(instance_type) or {}
    vcpus = int((info.get("VCpuInfo") or {}).get("DefaultVCpus") or 2)
    arches = (info.get("ProcessorInfo") or {}).get("SupportedArchitectures") or ["x86_64"]
    return vcpus, arches[0]


def on_demand_price(instance_type: str) -> float:
    if instance_type in ON_DEMAND:
        return ON_DEMAND[instance_type]
    vcpus, arch = _vcpus_and_arch(instance_type)
    per_vcpu = 0.034 if arch == "arm64" else 0.048
    return round(vcpus * per_vcpu, 4)


def _jitter(*parts: str) -> float:
    """A stable number in [0, 1) for a tuple of strings."""
    digest = hashlib.sha256("/".join(parts).encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32


def spot_price(instance_type: str, availability_zone: str, previous: bool = False) -> float:
    """Current (or the previous) spot price of a type in a zone; stable, differs per zone."""
    fraction = _SPOT_FRACTION.get(instance_type, 0.30 + 0.15 * _jitter(instance_type))
    zone_factor = 0.9 + 0.2 * _jitter(instance_type, availability_zone, "prev" if previous else "now")
    return round(on_demand_price(instance_type) * fraction * zone_factor, 4)

"""Static catalogue of the Equinix Metal emulator: metros, facilities, plans, operating systems.

The shapes follow the Metal API v1 (`Metro`, `Facility`, `Plan`, `OperatingSystem` schemas);
the values are a small, plausible subset of what the service offered before it was sunset on
2026-06-30. Identifiers are stable UUIDv5 values so that tests and logs can rely on them.

One thing here is the sandbox's own addition: `specs.features.kvm` says whether the plan
exposes hardware virtualisation (`/dev/kvm`). The real API has no such field; every real
Metal plan was bare metal. The sandbox marks one plan without it so that `require_kvm`
can be exercised.
"""

from __future__ import annotations

import uuid
from typing import Any

_NS = uuid.UUID("6f1c1c5e-2a8b-4d55-9a1f-6e0c7f5b9a10")
API_PREFIX = "/metal/v1"


def stable_id(kind: str, key: str) -> str:
    return str(uuid.uuid5(_NS, f"{kind}:{key}"))


# code, name, country
METROS = [
    ("da", "Dallas", "US"),
    ("sv", "Silicon Valley", "US"),
    ("ny", "New York", "US"),
    ("am", "Amsterdam", "NL"),
    ("fr", "Frankfurt", "DE"),
]

# facility code, name, metro code
FACILITIES = [
    ("da11", "Dallas DA11", "da"),
    ("sv15", "Silicon Valley SV15", "sv"),
    ("sv16", "Silicon Valley SV16", "sv"),
    ("ny5", "New York NY5", "ny"),
    ("am6", "Amsterdam AM6", "am"),
    ("fr2", "Frankfurt FR2", "fr"),
]

# slug: (description, architecture, cpus, memory, drives, nics, kvm, on-demand $/h, spot $/h,
#        metros where it is available)
PLANS: dict[str, dict[str, Any]] = {
    "c3.small.x86": {
        "name": "c3.small.x86",
        "description": "1 x Intel Xeon E-2278G 8-core 3.4 GHz, 32 GB RAM, 2 x 480 GB SSD",
        "architecture": "x86_64",
        "cpus": [{"count": 1, "type": "Intel Xeon E-2278G @ 3.40GHz"}],
        "memory": "32GB",
        "drives": [{"count": 2, "type": "SSD", "size": "480GB", "category": "boot"}],
        "nics": [{"count": 2, "type": "10Gbps"}],
        "kvm": True,
        "price": 0.75,
        "spot": 0.21,
        "metros": ["da", "sv", "ny", "am", "fr"],
    },
    "m3.small.x86": {
        "name": "m3.small.x86",
        "description": "1 x Intel Xeon E-2378G 8-core 2.8 GHz, 64 GB RAM, 2 x 480 GB SSD",
        "architecture": "x86_64",
        "cpus": [{"count": 1, "type": "Intel Xeon E-2378G @ 2.80GHz"}],
        "memory": "64GB",
        "drives": [{"count": 2, "type": "SSD", "size": "480GB", "category": "boot"}],
        "nics": [{"count": 2, "type": "25Gbps"}],
        "kvm": True,
        "price": 1.05,
        "spot": 0.30,
        "metros": ["da", "sv", "ny", "am"],
    },
    "m3.large.x86": {
        "name": "m3.large.x86",
        "description": "1 x AMD EPYC 7502P 32-core 2.5 GHz, 256 GB RAM, 2 x 3.8 TB NVMe",
        "architecture": "x86_64",
        "cpus": [{"count": 1, "type": "AMD EPYC 7502P 32-Core Processor @ 2.5GHz"}],
        "memory": "256GB",
        "drives": [
            {"count": 2, "type": "SSD", "size": "240GB", "category": "boot"},
            {"count": 2, "type": "NVME", "size": "3.8TB", "category": "storage"},
        ],
        "nics": [{"count": 2, "type": "25Gbps"}],
        "kvm": True,
        "price": 3.10,
        "spot": 0.95,
        "metros": ["da", "sv", "ny", "am", "fr"],
    },
    "c3.large.arm64": {
        "name": "c3.large.arm64",
        "description": "1 x Ampere Altra Q80-30 80-core 3.0 GHz, 256 GB RAM, 2 x 960 GB NVMe",
        "architecture": "aarch64",
        "cpus": [{"count": 1, "type": "Ampere Altra Q80-30 80-core @ 3.0GHz"}],
        "memory": "256GB",
        "drives": [{"count": 2, "type": "NVME", "size": "960GB", "category": "boot"}],
        "nics": [{"count": 2, "type": "25Gbps"}],
        "kvm": True,
        "price": 2.50,
        "spot": 0.60,
        "metros": ["da", "sv"],
    },
    "s3.xlarge.x86": {
        "name": "s3.xlarge.x86",
        "description": "1 x Intel Xeon Silver 4214 24-core 2.2 GHz, 192 GB RAM, 12 x 8 TB HDD "
        "(sandbox: virtualisation extensions disabled)",
        "architecture": "x86_64",
        "cpus": [{"count": 2, "type": "Intel Xeon Silver 4214 @ 2.20GHz"}],
        "memory": "192GB",
        "drives": [
            {"count": 2, "type": "SSD", "size": "960GB", "category": "boot"},
            {"count": 12, "type": "HDD", "size": "8TB", "category": "storage"},
        ],
        "nics": [{"count": 2, "type": "25Gbps"}],
        "kvm": False,
        "price": 2.95,
        "spot": 0.85,
        "metros": ["da", "ny"],
    },
}

_X86 = [s for s, p in PLANS.items() if p["architecture"] == "x86_64"]
_ALL = list(PLANS)

# slug: name, distro, version, plans it can be provisioned on
OPERATING_SYSTEMS: dict[str, tuple[str, str, str, list[str]]] = {
    "debian_11": ("Debian 11", "debian", "11", _ALL),
    "debian_12": ("Debian 12", "debian", "12", _ALL),
    "ubuntu_22_04": ("Ubuntu 22.04 LTS", "ubuntu", "22.04", _ALL),
    "nixos_22_11": ("NixOS 22.11", "nixos", "22.11", _X86),
    "nixos_23_05": ("NixOS 23.05", "nixos", "23.05", _ALL),
    "nixos_23_11": ("NixOS 23.11", "nixos", "23.11", _ALL),
}


def href(path: str) -> str:
    return API_PREFIX + path


def metro_obj(code: str) -> dict[str, Any]:
    for c, name, country in METROS:
        if c == code:
            return {"id": stable_id("metro", c), "code": c, "name": name, "country": country}
    raise KeyError(code)


def facility_obj(code: str) -> dict[str, Any]:
    for c, name, metro in FACILITIES:
        if c == code:
            return {
                "id": stable_id("facility", c),
                "code": c,
                "name": name,
                "features": ["baremetal", "backend_transfer", "global_ipv4"],
                "ip_ranges": [],
                "metro": metro_obj(metro),
            }
    raise KeyError(code)


def facilities_in(metro: str) -> list[str]:
    return [c for c, _n, m in FACILITIES if m == metro]


def metro_of_facility(facility: str) -> str | None:
    for c, _n, m in FACILITIES:
        if c == facility:
            return m
    return None


def resolve_metro(value: str) -> str | None:
    """A metro is given by code or id."""
    for c, _n, _country in METROS:
        if value in (c, stable_id("metro", c)):
            return c
    return None


def resolve_facility(value: str) -> str | None:
    for c, _n, _m in FACILITIES:
        if value in (c, stable_id("facility", c)):
            return c
    return None


def plan_obj(slug: str) -> dict[str, Any]:
    p = PLANS[slug]
    available_in = []
    for metro in p["metros"]:
        for fac in facilities_in(metro):
            available_in.append(
                {"href": href(f"/facilities/{stable_id('facility', fac)}"), "price": {"hour": p["price"]}}
            )
    return {
        "id": stable_id("plan", slug),
        "slug": slug,
        "name": p["name"],
        "description": p["description"],
        "class": slug,
        "line": "baremetal",
        "type": "standard",
        "legacy": False,
        "categories": ["compute", "current_gen"] if p["kvm"] else ["storage", "current_gen"],
        "deployment_types": ["on_demand", "spot_market"],
        "pricing": {"hour": p["price"]},
        "specs": {
            "cpus": p["cpus"],
            "memory": {"total": p["memory"]},
            "drives": p["drives"],
            "nics": p["nics"],
            "features": {"raid": True, "txt": True, "uefi": True, "kvm": p["kvm"]},
        },
        "available_in": available_in,
        "available_in_metros": [
            {"href": href(f"/locations/metros/{stable_id('metro', m)}"), "price": {"hour": p["price"]}}
            for m in p["metros"]
        ],
    }


def os_obj(slug: str) -> dict[str, Any]:
    name, distro, version, plans = OPERATING_SYSTEMS[slug]
    return {
        "id": stable_id("os", slug),
        "slug": slug,
        "name": name,
        "distro": distro,
        "distro_label": distro.capitalize() if distro != "nixos" else "NixOS",
        "version": version,
        "provisionable_on": list(plans),
        "preinstallable": False,
        "licensed": False,
        "pricing": {},
        "default_operating_system": slug in ("debian_12", "nixos_23_11", "ubuntu_22_04"),
    }


def spot_price(slug: str, metro: str) -> float:
    # A little variety between metros, deterministic.
    base = PLANS[slug]["spot"]
    bump = (sum(map(ord, metro)) % 5) * 0.01
    return round(base + bump, 2)

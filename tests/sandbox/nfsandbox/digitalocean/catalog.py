"""What the emulated DigitalOcean account sees: regions, sizes, distributions, public images."""

from __future__ import annotations

from typing import Any

# DigitalOcean's list (the `distribution` schema of the API document). Any other value
# is accepted and stored as "Unknown", as the document says and the service does.
DISTRIBUTIONS = (
    "Arch Linux",
    "CentOS",
    "CoreOS",
    "Debian",
    "Fedora",
    "Fedora Atomic",
    "FreeBSD",
    "Gentoo",
    "openSUSE",
    "RancherOS",
    "Rocky Linux",
    "Ubuntu",
    "Unknown",
)

BASIC_SIZES = [
    "s-1vcpu-512mb-10gb",
    "s-1vcpu-1gb",
    "s-1vcpu-2gb",
    "s-2vcpu-2gb",
    "s-2vcpu-4gb",
    "s-4vcpu-8gb",
    "s-8vcpu-16gb",
    "c-2",
    "c-4",
    "g-2vcpu-8gb",
    "m-2vcpu-16gb",
]
FEATURES = ["backups", "ipv6", "metadata", "install_agent", "storage", "image_transfer"]

# slug -> (name, available for new resources, extra features)
REGIONS: dict[str, tuple[str, bool, list[str]]] = {
    "nyc1": ("New York 1", True, []),
    "nyc3": ("New York 3", True, ["server_id", "management_networking"]),
    "sfo3": ("San Francisco 3", True, ["server_id", "management_networking"]),
    "ams3": ("Amsterdam 3", True, ["server_id", "management_networking"]),
    "fra1": ("Frankfurt 1", True, ["server_id", "management_networking"]),
    "lon1": ("London 1", True, ["server_id", "management_networking"]),
    "sgp1": ("Singapore 1", True, ["server_id", "management_networking"]),
    "tor1": ("Toronto 1", True, ["server_id", "management_networking"]),
    "blr1": ("Bangalore 1", True, ["server_id", "management_networking"]),
    "syd1": ("Sydney 1", True, ["server_id", "management_networking"]),
    # older regions that still appear in the catalogue but take no new resources
    "nyc2": ("New York 2", False, []),
    "sfo2": ("San Francisco 2", False, []),
}


def region_obj(slug: str) -> dict[str, Any]:
    name, available, extra = REGIONS[slug]
    return {
        "name": name,
        "slug": slug,
        "features": FEATURES + extra,
        "available": available,
        "sizes": list(BASIC_SIZES) if available else [],
    }


def available_regions() -> list[str]:
    return [slug for slug, entry in REGIONS.items() if entry[1]]


# Public images: (id, slug, name, distribution, type, min_disk_size, size_gigabytes, created_at)
PUBLIC_IMAGES: list[tuple[int, str, str, str, str, int, float, str]] = [
    (155000001, "debian-12-x64", "12 x64", "Debian", "base", 10, 0.94, "2025-06-10T16:41:12Z"),
    (155000002, "debian-13-x64", "13 x64", "Debian", "base", 10, 1.07, "2026-08-12T10:02:44Z"),
    (155000003, "ubuntu-24-04-x64", "24.04 (LTS) x64", "Ubuntu", "base", 10, 2.36, "2026-04-25T09:15:30Z"),
    (155000004, "ubuntu-22-04-x64", "22.04 (LTS) x64", "Ubuntu", "base", 7, 2.15, "2024-11-02T14:20:01Z"),
    (155000005, "fedora-42-x64", "42 x64", "Fedora", "base", 10, 1.43, "2026-04-16T19:00:07Z"),
    (155000006, "rockylinux-9-x64", "9 x64", "Rocky Linux", "base", 10, 1.69, "2025-12-01T08:33:52Z"),
    (155000007, "docker-20-04", "Docker on Ubuntu 22.04", "Ubuntu", "snapshot", 25, 4.12, "2025-03-02T11:45:09Z"),
]
APPLICATION_SLUGS = {"docker-20-04"}


def public_image(entry: tuple[int, str, str, str, str, int, float, str]) -> dict[str, Any]:
    image_id, slug, name, distribution, kind, min_disk, size, created = entry
    return {
        "id": image_id,
        "name": name,
        "type": kind,
        "distribution": distribution,
        "slug": slug,
        "public": True,
        "regions": available_regions(),
        "created_at": created,
        "min_disk_size": min_disk,
        "size_gigabytes": size,
        "description": f"{distribution} {name}",
        "tags": [],
        "status": "available",
        "error_message": "",
    }

"""Where one sandbox instance lives: names, addresses, ports and directories.

Everything is derived from the instance number so that several sandboxes can run
side by side on one machine (colleagues testing in parallel) and so that
`sandboxctl down` can find every piece of an instance again even when the daemon
that made them was killed: a name that can be recomputed needs no record.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

INSTANCE_ENV = "NIXFORGE_SANDBOX_INSTANCE"
MAX_INSTANCE = 199  # keeps 10.213.N.0/24 and the port blocks below valid

# Per-instance port block on 127.0.0.1 (and the bridge address for the apt proxy).
# Fixed offsets: tests and colleagues can predict endpoints, and state.json says them.
PORT_BASE = 20000
PORT_BLOCK = 20
PORT_OFFSETS = {
    "control": 0,
    "aptproxy": 1,
    "ec2": 2,
    "metal": 3,
    "digitalocean": 4,
    "b2": 5,
}

# Providers the daemon tries to load; a missing module is logged and skipped so the
# sandbox works before every emulator exists.
DEFAULT_PROVIDERS = ("ec2", "metal", "digitalocean", "b2")

FIRST_HOST = 10  # .1 is the gateway (bridge), .2-.9 stay free for future services
LAST_HOST = 250


def cache_root() -> Path:
    """Shared by all instances: base root filesystems and apt caches survive `down`."""
    return Path(os.environ.get("NIXFORGE_SANDBOX_CACHE", "/var/cache/nixforge-sandbox"))


@dataclass(frozen=True)
class Instance:
    number: int

    def __post_init__(self) -> None:
        if not 0 <= self.number <= MAX_INSTANCE:
            raise ValueError(f"{INSTANCE_ENV} must be an integer 0..{MAX_INSTANCE}, got {self.number}")

    # -- network -------------------------------------------------------------------
    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"10.213.{self.number}.0/24")

    @property
    def gateway(self) -> str:
        return f"10.213.{self.number}.1"

    @property
    def prefixlen(self) -> int:
        return self.network.prefixlen

    @property
    def bridge(self) -> str:
        return f"nfsbr{self.number}"

    @property
    def route_table(self) -> int:
        # policy-routing table that answers "unreachable" to anything a host sends off
        # the bridge (see network.py)
        return 21300 + self.number

    def host_ip(self, index: int) -> str:
        return f"10.213.{self.number}.{FIRST_HOST + index}"

    def host_name(self, index: int) -> str:
        # also the netns name; short enough for veth names derived from it
        return f"nfs{self.number}-h{index}"

    def veth(self, index: int) -> str:
        return f"nfs{self.number}h{index}"  # host side; <= 15 chars (IFNAMSIZ)

    @property
    def name_prefix(self) -> str:
        """Every netns of this instance starts with this (used by cleanup)."""
        return f"nfs{self.number}-"

    @property
    def veth_prefix(self) -> str:
        return f"nfs{self.number}h"

    @property
    def max_hosts(self) -> int:
        return LAST_HOST - FIRST_HOST + 1

    # -- ports ---------------------------------------------------------------------
    def port(self, name: str) -> int:
        if name not in PORT_OFFSETS:
            raise KeyError(f"no port reserved for {name!r}; add it to config.PORT_OFFSETS")
        return PORT_BASE + self.number * PORT_BLOCK + PORT_OFFSETS[name]

    # -- directories ---------------------------------------------------------------
    @property
    def state_dir(self) -> Path:
        """Small files: state.json, PID records, logs, CA."""
        return Path("/run/nixforge-sandbox") / str(self.number)

    @property
    def work_dir(self) -> Path:
        """Bulky per-host overlay layers; on disk, removed by `down`."""
        return Path("/var/lib/nixforge-sandbox") / str(self.number)

    @property
    def records_dir(self) -> Path:
        return self.state_dir / "records"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "daemon.log"

    @property
    def apt_cache_dir(self) -> Path:
        # per instance: two apt-cacher-ng processes must not share one cache directory
        return cache_root() / "apt" / str(self.number)

    @property
    def cgroup_name(self) -> str:
        """Every process of the instance runs below this cgroup (see procs.py)."""
        return f"nixforge-sandbox/{self.number}"

    @property
    def control_url(self) -> str:
        return f"http://127.0.0.1:{self.port('control')}"


def instance_from_env(default: int = 0) -> Instance:
    raw = os.environ.get(INSTANCE_ENV, "").strip()
    if not raw:
        return Instance(default)
    try:
        return Instance(int(raw))
    except ValueError:
        raise SystemExit(f"{INSTANCE_ENV}={raw!r}: expected an integer 0..{MAX_INSTANCE}") from None

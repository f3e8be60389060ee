"""The instance's private network: one bridge carrying the gateway, one netns per host.

Hosts sit on a bridge (two veths with the same address cannot reach each other, and
hosts must reach each other for remote Nix builds) and get a default route via the
gateway, as a cloud machine has (Ansible's `ansible_default_ipv4` depends on it).

Nothing may leave the machine, and what tries should fail at once rather than hang:
with forwarding off the kernel silently drops a host's packets to the outside world,
so a stray download would wait for its TCP timeout. Instead forwarding is enabled on
the bridge only and a policy rule sends everything arriving on the bridge to a table
whose only route is `prohibit`: the host gets an immediate ICMP error, and still
nothing is forwarded anywhere. Addresses of the machine itself (the gateway, where
the apt proxy listens) are in the `local` table, which is consulted first.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..cmd import run
from ..config import Instance

log = logging.getLogger("nfsandbox.hosts.network")
NETNS_DIR = Path("/run/netns")


def _link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


class Network:
    def __init__(self, inst: Instance):
        self.inst = inst

    # -- bridge ----------------------------------------------------------------------
    def up(self) -> None:
        br, inst = self.inst.bridge, self.inst
        if not _link_exists(br):
            run(["ip", "link", "add", br, "type", "bridge"])
            run(["ip", "addr", "add", f"{inst.gateway}/{inst.prefixlen}", "dev", br])
        run(["ip", "link", "set", br, "up"])
        table = str(inst.route_table)
        run(["ip", "route", "replace", "prohibit", "default", "table", table])
        if f"lookup {table}" not in run(["ip", "rule", "show", "pref", table]):
            run(["ip", "rule", "add", "iif", br, "lookup", table, "pref", table])
        # only now that the rule is in place (see module docstring)
        Path(f"/proc/sys/net/ipv4/conf/{br}/forwarding").write_text("1\n")
        log.info("bridge %s up with %s/%s", br, inst.gateway, inst.prefixlen)

    def down(self) -> None:
        """Remove the bridge, the rule and every veth/netns of this instance. Idempotent."""
        inst = self.inst
        for ns in self.namespaces():
            run(["ip", "netns", "del", ns], check=False)
        for link in Path("/sys/class/net").iterdir():
            if link.name.startswith(inst.veth_prefix):
                run(["ip", "link", "del", link.name], check=False)
        if _link_exists(inst.bridge):
            Path(f"/proc/sys/net/ipv4/conf/{inst.bridge}/forwarding").write_text("0\n")
            run(["ip", "link", "del", inst.bridge], check=False)
        table = str(inst.route_table)
        while f"lookup {table}" in run(["ip", "rule", "show", "pref", table], check=False):
            run(["ip", "rule", "del", "pref", table], check=False)
        run(["ip", "route", "flush", "table", table], check=False)

    def namespaces(self) -> list[str]:
        if not NETNS_DIR.is_dir():
            return []
        return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(self.inst.name_prefix))

    # -- hosts -----------------------------------------------------------------------
    def add_host(self, index: int) -> str:
        """Create netns + veth for host `index`; return the netns name."""
        inst = self.inst
        ns, veth, ip = inst.host_name(index), inst.veth(index), inst.host_ip(index)
        self.del_host(index)  # a leftover of a killed run must not make this fail
        run(["ip", "netns", "add", ns])
        try:
            run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
            run(["ip", "link", "set", veth, "master", inst.bridge, "up"])
            run(["ip", "-n", ns, "addr", "add", f"{ip}/{inst.prefixlen}", "dev", "eth0"])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
            run(["ip", "-n", ns, "link", "set", "eth0", "up"])
            run(["ip", "-n", ns, "route", "add", "default", "via", inst.gateway])
        except Exception:
            self.del_host(index)
            raise
        return ns

    def del_host(self, index: int) -> None:
        ns, veth = self.inst.host_name(index), self.inst.veth(index)
        if (NETNS_DIR / ns).exists():
            run(["ip", "netns", "del", ns], check=False)
        if _link_exists(veth):
            run(["ip", "link", "del", veth], check=False)

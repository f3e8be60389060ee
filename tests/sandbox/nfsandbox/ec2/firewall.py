"""Security groups of the sandbox's EC2, enforced in each host's network namespace.

EC2 drops inbound traffic that no security group of the instance allows; a module that
opens SSH to the wrong CIDR must see its builder unreachable here too, not only on AWS.
Each EC2 host gets an nftables table in its own netns (never the machine's): inbound is
dropped unless an ingress rule of one of its groups allows it (CIDRs, or the addresses
of instances in a referenced group); replies to the host's own traffic pass. Egress is
left open (the default egress rule of every group). Rules follow the groups as they
change (AuthorizeSecurityGroupIngress, RevokeSecurityGroupIngress).
"""

from __future__ import annotations

import ipaddress
import logging
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass

log = logging.getLogger("nfsandbox.ec2.firewall")
TABLE = "nixforge_sg"


@dataclass(frozen=True)
class Rule:
    protocol: str  # "-1" (all), "tcp", "udp", "icmp"
    from_port: int | None
    to_port: int | None
    sources: tuple[str, ...]  # IPv4 CIDRs / addresses allowed


def rules_of(groups: Iterable, addresses_in_group: dict[str, list[str]]) -> list[Rule]:
    """The ingress rules of moto ``SecurityGroup`` objects, references resolved to addresses."""
    out: list[Rule] = []
    for group in groups:
        for rule in getattr(group, "ingress_rules", []):
            sources: list[str] = []
            cidr = (getattr(rule, "ip_range", None) or {}).get("CidrIp")
            if cidr:
                sources.append(str(ipaddress.ip_network(cidr, strict=False)))
            ref = (getattr(rule, "source_group", None) or {}).get("GroupId")
            if ref:
                sources += addresses_in_group.get(ref, [])
            if not sources:
                continue
            proto = rule.ip_protocol or "-1"
            out.append(Rule(proto, rule.from_port, rule.to_port, tuple(sorted(set(sources)))))
    return out


def ruleset(rules: list[Rule]) -> str:
    """An nftables script replacing our table atomically."""
    lines = [
        f"table inet {TABLE}",
        f"delete table inet {TABLE}",
        f"table inet {TABLE} {{",
        "  chain input {",
        "    type filter hook input priority 0; policy drop;",
        '    iifname "lo" accept',
        "    ct state established,related accept",
    ]
    for rule in sorted(set(rules), key=repr):
        match = "ip saddr { %s }" % ", ".join(rule.sources)
        if rule.protocol == "-1":
            lines.append(f"    {match} accept")
        elif rule.protocol in ("tcp", "udp"):
            ports = str(rule.from_port) if rule.from_port == rule.to_port else f"{rule.from_port}-{rule.to_port}"
            lines.append(f"    {match} {rule.protocol} dport {ports} accept")
        elif rule.protocol == "icmp":
            lines.append(f"    {match} ip protocol icmp accept")
        else:
            lines.append(f"    {match} meta l4proto {rule.protocol} accept")
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def apply(netns: str, script: str) -> None:
    subprocess.run(
        ["ip", "netns", "exec", netns, "nft", "-f", "-"], input=script, text=True, check=True, capture_output=True
    )

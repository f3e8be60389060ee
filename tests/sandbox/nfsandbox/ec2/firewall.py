"""Security groups of the sandbox's EC2, enforced in each host's network namespace.

EC2 drops inbound traffic that no security group of the instance allows; a module that
opens SSH to the wrong CIDR must see its builder unreachable here too, not only on AWS.
Each EC2 host gets an nftables table in its own netns (never the machine's): inbound is
dropped unless an ingress rule of one of its groups allows it (CIDRs, or the addresses
of instances in a referenced group), IPv4 and IPv6 alike (``CidrIp`` and ``CidrIpv6``; a
family no rule names is dropped whole); replies to the host's own traffic and IPv6
neighbour discovery pass (EC2 does not filter them either). Egress is left open (the
default egress rule of every group). Rules follow the groups as they change
(AuthorizeSecurityGroupIngress, RevokeSecurityGroupIngress).
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
    sources: tuple[str, ...]  # IPv4 and IPv6 CIDRs / addresses allowed


def rules_of(groups: Iterable, addresses_in_group: dict[str, list[str]]) -> list[Rule]:
    """The ingress rules of moto ``SecurityGroup`` objects, references resolved to addresses."""
    out: list[Rule] = []
    for group in groups:
        for rule in getattr(group, "ingress_rules", []):
            sources: list[str] = []
            ip_range = getattr(rule, "ip_range", None) or {}
            for cidr in (ip_range.get("CidrIp"), ip_range.get("CidrIpv6")):
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
        "    icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert } accept",
    ]
    for rule in sorted(set(rules), key=repr):
        for family, sources in _by_family(rule.sources):
            lines.append("    " + _statement(rule, "%s saddr { %s }" % (family, ", ".join(sources))))
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def _by_family(sources: Iterable[str]) -> list[tuple[str, list[str]]]:
    """``[("ip", IPv4 sources), ("ip6", IPv6 sources)]``, a family without sources left out."""
    v4 = [s for s in sources if ipaddress.ip_network(s, strict=False).version == 4]
    v6 = [s for s in sources if ipaddress.ip_network(s, strict=False).version == 6]
    return [(family, found) for family, found in (("ip", v4), ("ip6", v6)) if found]


def _statement(rule: Rule, match: str) -> str:
    if rule.protocol == "-1":
        return f"{match} accept"
    if rule.protocol in ("tcp", "udp"):
        ports = str(rule.from_port) if rule.from_port == rule.to_port else f"{rule.from_port}-{rule.to_port}"
        return f"{match} {rule.protocol} dport {ports} accept"
    if rule.protocol == "icmp":
        return f"{match} meta l4proto icmp accept"
    if rule.protocol in ("58", "icmpv6"):  # EC2 names ICMPv6 by its number
        return f"{match} meta l4proto ipv6-icmp accept"
    return f"{match} meta l4proto {rule.protocol} accept"


def apply(netns: str, script: str) -> None:
    subprocess.run(
        ["ip", "netns", "exec", netns, "nft", "-f", "-"], input=script, text=True, check=True, capture_output=True
    )

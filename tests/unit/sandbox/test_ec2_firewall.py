from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "sandbox"))

from nfsandbox.ec2 import firewall as ec2_firewall


def rule(proto, low, high, cidr=None, group=None):
    return SimpleNamespace(
        ip_protocol=proto,
        from_port=low,
        to_port=high,
        ip_range={"CidrIp": cidr} if cidr else {},
        source_group={"GroupId": group} if group else {},
    )


def test_rules_resolve_cidrs_and_group_references():
    sg = SimpleNamespace(
        id="sg-1",
        ingress_rules=[
            rule("tcp", 22, 22, cidr="10.213.0.1/32"),
            rule("-1", None, None, group="sg-1"),
            rule("tcp", 80, 80, group="sg-empty"),  # a group with no running member allows nothing
        ],
    )
    rules = ec2_firewall.rules_of([sg], {"sg-1": ["10.213.0.10", "10.213.0.11"]})
    assert rules == [
        ec2_firewall.Rule("tcp", 22, 22, ("10.213.0.1/32",)),
        ec2_firewall.Rule("-1", None, None, ("10.213.0.10", "10.213.0.11")),
    ]


def test_ruleset_drops_by_default_and_allows_replies():
    script = ec2_firewall.ruleset([ec2_firewall.Rule("tcp", 22, 22, ("10.213.0.1/32",))])
    assert "policy drop;" in script
    assert "ct state established,related accept" in script
    assert "ip saddr { 10.213.0.1/32 } tcp dport 22 accept" in script
    assert script.startswith("table inet nixforge_sg\ndelete table inet nixforge_sg\n")


def test_port_ranges_and_icmp():
    script = ec2_firewall.ruleset(
        [ec2_firewall.Rule("udp", 60000, 61000, ("0.0.0.0/0",)), ec2_firewall.Rule("icmp", -1, -1, ("0.0.0.0/0",))]
    )
    assert "udp dport 60000-61000 accept" in script
    assert "ip protocol icmp accept" in script

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "sandbox"))

from nfsandbox.ec2 import firewall as ec2_firewall


def rule(proto, low, high, cidr=None, group=None, cidr6=None):
    return SimpleNamespace(
        ip_protocol=proto,
        from_port=low,
        to_port=high,
        ip_range={"CidrIp": cidr} if cidr else ({"CidrIpv6": cidr6} if cidr6 else {}),
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
    assert "ip saddr { 0.0.0.0/0 } meta l4proto icmp accept" in script


def test_ipv6_rules_are_enforced_in_their_own_family():
    """A CidrIpv6 rule allows only its IPv6 sources; IPv4 sources stay in their own match
    (a /32 of the controller never opens the port to IPv6, and an IPv6 rule is not lost)."""
    sg = SimpleNamespace(
        id="sg-6",
        ingress_rules=[rule("tcp", 22, 22, cidr="10.213.0.1/32"), rule("tcp", 22, 22, cidr6="fd00:213::1/128")],
    )
    rules = ec2_firewall.rules_of([sg], {})
    assert rules == [
        ec2_firewall.Rule("tcp", 22, 22, ("10.213.0.1/32",)),
        ec2_firewall.Rule("tcp", 22, 22, ("fd00:213::1/128",)),
    ]
    script = ec2_firewall.ruleset([*rules, ec2_firewall.Rule("58", -1, -1, ("::/0",))])
    assert "ip saddr { 10.213.0.1/32 } tcp dport 22 accept" in script
    assert "ip6 saddr { fd00:213::1/128 } tcp dport 22 accept" in script
    assert "ip6 saddr { ::/0 } meta l4proto ipv6-icmp accept" in script
    assert "ip6 saddr { 10.213" not in script and "ip saddr { fd00" not in script
    mixed = ec2_firewall.ruleset([ec2_firewall.Rule("-1", None, None, ("10.0.0.5", "fd00::5"))])
    assert "ip saddr { 10.0.0.5/32 } accept" in mixed or "ip saddr { 10.0.0.5 } accept" in mixed
    assert "ip6 saddr { fd00::5 } accept" in mixed or "ip6 saddr { fd00::5/128 } accept" in mixed


@pytest.mark.skipif(shutil.which("nft") is None or os.geteuid() != 0, reason="needs nft and root (make deps)")
def test_the_ruleset_with_ipv6_is_valid_nftables():
    """nft itself checks the script (``-c``: parsed and validated, nothing applied)."""
    script = ec2_firewall.ruleset(
        [
            ec2_firewall.Rule("tcp", 22, 22, ("10.213.0.1/32", "fd00:213::1/128")),
            ec2_firewall.Rule("58", -1, -1, ("::/0",)),
            ec2_firewall.Rule("icmp", -1, -1, ("0.0.0.0/0",)),
        ]
    )
    # the first two lines create-then-delete the table (for a re-apply); -c checks the rest
    body = "\n".join(script.splitlines()[2:]) + "\n"
    done = subprocess.run(["nft", "-c", "-f", "-"], input=body, text=True, capture_output=True, check=False)
    assert done.returncode == 0, done.stderr

"""plugin_utils/_machine.py: one description of the builder whatever the provider gave."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from ansible_collections.nixforge.images.plugins.plugin_utils import _machine
from ansible_collections.nixforge.images.plugins.plugin_utils.builder import InputError

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB host"
GIVEN = {"host_public_key": HOST_KEY, "expires_at": "2026-12-07T03:00:00Z", "region": "us-east-1"}
KEYS = (
    "connection",
    "id",
    "type",
    "price_per_hour",
    "lifecycle",
    "host",
    "port",
    "user",
    "known_hosts_lines",
    "host_public_key",
    "expires_at",
    "work_dir",
    "record_file",
    "private_key_file",
    "known_hosts_file",
    "region",
    "metro",
    "availability_zone",
    "adopted",
)


def test_ec2_spot_price_port_and_pinned_line() -> None:
    result = {
        "instance_id": "i-1",
        "instance_type": "c6g.large",
        "spot_price": 0.03,
        "max_price": 0.07,
        "lifecycle": "spot",
        "availability_zone": "us-east-1a",
        "ssh_host": "10.0.0.5",
        "ssh_port": 2222,
    }
    machine = _machine.describe("ec2", result, GIVEN, "/s")
    assert set(KEYS) <= set(machine)
    assert machine["price_per_hour"] == 0.03 and machine["price_upper_bound"] == 0.07
    assert machine["known_hosts_lines"] == ["[10.0.0.5]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB"]
    assert (machine["user"], machine["region"], machine["expires_at"]) == ("admin", "us-east-1", GIVEN["expires_at"])
    on_demand = _machine.describe("ec2", dict(result, spot_price=None), GIVEN, "/s")
    assert on_demand["price_per_hour"] == 0.07


def test_metal_device() -> None:
    device = {
        "id": "d1",
        "plan": "c3.small.x86",
        "price_per_hour": 0.5,
        "spot_instance": True,
        "metro": "da",
        "public_ipv4": "10.0.0.6",
        "termination_time": "2026-12-07T04:00:00Z",
        "kvm": True,
    }
    machine = _machine.describe("metal", {"device": device, "adopted": True}, GIVEN, "/s")
    assert set(KEYS) <= set(machine)
    assert (machine["lifecycle"], machine["user"], machine["kvm"]) == ("spot", "root", True)
    assert machine["known_hosts_lines"] == ["10.0.0.6 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB"]
    assert machine["expires_at"] == "2026-12-07T04:00:00Z" and machine["adopted"] is True


def test_own_host_pinned_by_its_key_or_known_hosts(tmp_path: Path) -> None:
    given = {
        "connection": "ssh",
        "host": "10.0.0.7",
        "port": 22,
        "user": "admin",
        "host_key": HOST_KEY,
        "known_hosts_file": str(tmp_path / "none"),
        "work_dir": "/var/tmp/w",
    }
    machine = _machine.describe("ssh", {}, given, "/s")
    assert set(KEYS) <= set(machine)
    assert machine["record_file"] == "/var/tmp/w/.nixforge-record.jsonl" and machine["price_per_hour"] == 0
    known = tmp_path / "known_hosts"
    known.write_text("10.0.0.7 " + HOST_KEY + "\n")
    subprocess.run(["ssh-keygen", "-H", "-f", str(known)], check=True, capture_output=True)  # hashed entries too
    found = _machine.describe("ssh", {}, dict(given, host_key="", known_hosts_file=str(known)), "/s")
    assert len(found["known_hosts_lines"]) == 1 and found["known_hosts_lines"][0].startswith("|1|")
    with pytest.raises(InputError, match="builder_host_ssh_host_key"):
        _machine.describe("ssh", {}, dict(given, host_key=""), "/s")
    local = _machine.describe("ssh", {}, dict(given, connection="local"), "/s")
    assert (local["connection"], local["host"], local["private_key_file"]) == ("local", "localhost", "")


def test_teardown_result_names_what_the_provider_ended() -> None:
    result = {
        "removed": {"instances": ["i-1"]},
        "ended": [{"code": "Server.SpotInstanceTermination", "instance_id": "i-1"}],
    }
    out = _machine.teardown_result({"provider": "ec2", "build_id": "b1", "result": result})
    assert out == {
        "provider": "ec2",
        "build_id": "b1",
        "removed": {"instances": ["i-1"]},
        "ended": ["Server.SpotInstanceTermination on i-1"],
        "left": {},
    }
    assert _machine.teardown_result({"provider": "ssh", "build_id": "b1", "result": {}})["ended"] == []


def test_teardown_result_hands_on_what_a_teardown_without_waiting_left() -> None:
    """parts/report.yml reads builder_host_teardown_result.left to remove the security group at the end."""
    result = {"removed": {"instances": ["i-1"]}, "ended": [], "left": {"security_groups": ["sg-1"]}}
    out = _machine.teardown_result({"provider": "ec2", "build_id": "b1", "result": result})
    assert out["left"] == {"security_groups": ["sg-1"]} and out["removed"] == {"instances": ["i-1"]}

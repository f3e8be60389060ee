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


INV = {
    "name": "nixforge-builder-b1",
    "group": "nixforge_builders",
    "control_path_dir": "/tmp/nf-cp",
    "public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIC user",
    "started_at": "2026-12-07T00:00:00Z",
    "started_epoch": "1796601600",
    "expires_at": "2026-12-07T03:00:00Z",
    "playbook_python": "/venv/bin/python",
}


def test_an_ec2_builder_is_added_with_the_pinned_key_only_and_a_known_python() -> None:
    machine = _machine.describe("ec2", {"instance_id": "i-1", "ssh_host": "10.0.0.5", "ssh_port": 2222}, GIVEN, "/s")
    entry = _machine.inventory_host(machine, INV, "ec2", "b1")
    assert (entry["host_name"], entry["groups"]) == ("nixforge-builder-b1", ["nixforge_builders"])
    hv = entry["host_vars"]
    assert (hv["ansible_host"], hv["ansible_port"], hv["ansible_user"]) == ("10.0.0.5", 2222, "admin")
    assert hv["ansible_host_key_checking"] is True and hv["ansible_control_path_dir"] == "/tmp/nf-cp"
    assert hv["ansible_ssh_common_args"].startswith(
        "-o UserKnownHostsFile=/s/known_hosts -o GlobalKnownHostsFile=/dev/null"
    )
    assert "StrictHostKeyChecking=yes" in hv["ansible_ssh_common_args"]
    assert hv["ansible_python_interpreter"] == "/usr/bin/python3"
    assert (hv["nixforge_build_id"], hv["nixforge_public_key"]) == ("b1", INV["public_key"])
    assert "ansible_remote_tmp" not in hv and "ansible_become" not in hv


def test_the_controller_as_builder_runs_ansibles_python_and_an_own_host_keeps_tmp_in_the_work_dir(
    tmp_path: Path,
) -> None:
    local = _machine.describe("ssh", {}, {"connection": "local", "work_dir": "/var/tmp/w", "port": 22}, str(tmp_path))
    hv = _machine.inventory_host(local, INV, "ssh", "b1")["host_vars"]
    assert hv["ansible_connection"] == "local" and hv["ansible_python_interpreter"] == "/venv/bin/python"
    assert "ansible_host" not in hv and "nixforge_public_key" not in hv
    own = _machine.describe(
        "ssh", {}, {"host": "h1", "port": 22, "host_key": HOST_KEY, "work_dir": "/var/tmp/w"}, str(tmp_path)
    )
    hv = _machine.inventory_host(own, INV, "ssh", "b1")["host_vars"]
    assert hv["ansible_python_interpreter"] == "auto_silent"
    assert hv["ansible_remote_tmp"] == "/var/tmp/w/.ansible-tmp"
    assert hv["nixforge_record_file"] == "/var/tmp/w/.nixforge-record.jsonl"


def test_builder_result_has_every_documented_key() -> None:
    machine = _machine.describe("ec2", {"instance_id": "i-1", "ssh_host": "10.0.0.5", "kvm": True}, GIVEN, "/s")
    result = _machine.builder_result(machine, INV, "ec2", "b1", "/s")
    documented = {
        "provider", "build_id", "id", "type", "price_per_hour", "lifecycle", "region", "metro", "availability_zone",
        "address", "ssh_user", "inventory_hostname", "group", "adopted", "started_at", "started_epoch", "expires_at",
        "state_dir", "private_key_file", "public_key", "host_public_key", "known_hosts_file", "work_dir", "record_file",
    }  # fmt: skip
    assert documented <= set(result)
    assert (result["address"], result["started_epoch"], result["kvm"]) == ("10.0.0.5", 1796601600, True)
    assert result["expires_at"] == GIVEN["expires_at"]

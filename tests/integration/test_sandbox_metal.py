"""The sandbox's Equinix Metal emulator, driven with packet-python over HTTPS.

Real hosts, real SSH: a device's public IPv4 is a sandbox host that answers as root
with the project key, behind the host key given in user data (pinned, never skipped).
Every test ends with nothing of Metal left in the sandbox's resource list.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "sandbox"))

from nfsandbox.metal.testing import MetalSandbox, collection_on_path, write_keys  # noqa: E402

pytestmark = [pytest.mark.sandbox]


@pytest.fixture(scope="module")
def sandbox(metal_sandbox: MetalSandbox) -> MetalSandbox:
    return metal_sandbox


@pytest.fixture
def metal(sandbox):
    """packet-python Manager; afterwards, proof that nothing of Metal is left."""
    sandbox.set_faults({})
    manager = sandbox.manager()
    yield manager
    sandbox.set_faults({})
    # Look first, then clean: what the test did not remove itself is a leak, reported as
    # such (and still cleaned, so that the next test starts from nothing).
    devices = manager.call_api("projects/%s/devices" % sandbox.project_id, params={"per_page": 1000})["devices"]
    keys = manager.call_api("ssh-keys")["ssh_keys"]
    left = [("device", d["id"], d["state"]) for d in devices if d["state"] != "deprovisioning"]
    left += [("ssh_key", k["id"], k.get("label")) for k in keys]
    for kind, item_id, _what in left:
        manager.call_api("%s/%s" % ("devices" if kind == "device" else "ssh-keys", item_id), "DELETE")
    wait_until(lambda: not sandbox.metal_resources(), 60, "Metal resources to be gone")
    assert left == [], "the test left Metal resources behind"
    assert sandbox.leftovers() == []


def delete(metal, device_ids=(), key_ids=()) -> None:
    """What a test created, removed by the test itself (the fixture counts anything else as a leak)."""
    for device_id in device_ids:
        metal.call_api("devices/%s" % device_id, "DELETE")
    for key_id in key_ids:
        metal.call_api("ssh-keys/%s" % key_id, "DELETE")


def wait_until(predicate, timeout: float, what: str, interval: float = 0.25) -> Any:
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def cloud_config_with_host_key(keys: dict[str, str], extra: str = "") -> str:
    private = "".join("    " + line + "\n" for line in keys["host_key_private"].splitlines())
    return (
        "#cloud-config\nssh_genkeytypes: []\nssh_deletekeys: true\nssh_keys:\n  ed25519_private: |\n"
        + private
        + "  ed25519_public: "
        + keys["host_key_public"]
        + "\n"
        + extra
    )


def create(metal, sandbox, **body: Any) -> dict[str, Any]:
    payload = {
        "hostname": "t",
        "plan": "c3.small.x86",
        "metro": "da",
        "operating_system": "debian_12",
        "billing_cycle": "hourly",
        "tags": ["nixforge-build-id=emulator-test"],
    }
    payload.update(body)
    return metal.call_api("projects/%s/devices" % sandbox.project_id, "POST", payload)


def wait_state(metal, device_id: str, states: tuple[str, ...], timeout: float = 120) -> dict[str, Any]:
    seen: list[str] = []

    def probe():
        dev = metal.call_api("devices/%s" % device_id)
        if not seen or seen[-1] != dev["state"]:
            seen.append(dev["state"])
        return dev if dev["state"] in states else None

    dev = wait_until(probe, timeout, f"device {device_id} to reach {states} (seen {seen})")
    dev["_seen"] = seen
    return dev


def gone(metal, device_id: str) -> bool:
    from packet.baseapi import ResponseError

    try:
        metal.call_api("devices/%s" % device_id)
    except ResponseError as exc:
        assert exc.response.status_code == 404
        assert exc.response.json() == {"errors": ["Not found"]}
        return True
    return False


def ssh(tmp_path: Path, ip: str, host_public_key: str, command: str, key: str = "id_ed25519") -> str:
    known = tmp_path / "known_hosts"
    known.write_text("%s %s\n" % (ip, " ".join(host_public_key.split()[:2])))
    proc = subprocess.run(
        [
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            str(tmp_path / key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={known}",
            "-o",
            "ConnectTimeout=10",
            f"root@{ip}",
            command,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def public_ipv4(device: dict[str, Any]) -> str:
    return next(a["address"] for a in device["ip_addresses"] if a["address_family"] == 4 and a["public"])


def test_device_life_cycle_and_root_ssh(sandbox, metal, tmp_path):
    keys = write_keys(tmp_path)
    key = metal.create_project_ssh_key(sandbox.project_id, "emulator-test", keys["public_key"])
    device = create(
        metal,
        sandbox,
        project_ssh_keys=[key.id],
        userdata=cloud_config_with_host_key(keys),
        spot_instance=True,
        spot_price_max=0.5,
        termination_time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600)),
    )
    assert device["state"] == "queued"
    assert device["spot_instance"] is True and device["spot_price_max"] == 0.5
    assert device["ip_addresses"] == []
    active = wait_state(metal, device["id"], ("active",))
    assert "provisioning" in active["_seen"]
    ip = public_ipv4(active)
    hosts = {h["ip"]: h for h in sandbox.control("GET", "/hosts")["hosts"]}
    assert hosts[ip]["owner"] == "metal:%s" % device["id"]
    families = sorted((a["address_family"], a["public"]) for a in active["ip_addresses"])
    assert families == [(4, False), (4, True), (6, True)]
    assert active["ssh_keys"] == [{"href": "/metal/v1/ssh-keys/%s" % key.id}]

    out = ssh(tmp_path, ip, keys["host_key_public"], "id -un; cat /root/.ssh/authorized_keys")
    assert out.splitlines()[0] == "root"
    assert keys["public_key"].split()[1] in out

    metal.call_api("devices/%s" % device["id"], "DELETE")
    assert metal.call_api("devices/%s" % device["id"])["state"] == "deprovisioning"
    wait_until(lambda: gone(metal, device["id"]), 60, "the device to be gone")
    assert not [r for r in sandbox.resources() if r.get("ip") == ip]
    delete(metal, key_ids=[key.id])


def test_termination_time_ends_the_device(sandbox, metal, tmp_path):
    keys = write_keys(tmp_path)
    device = create(
        metal,
        sandbox,
        userdata=cloud_config_with_host_key(keys),
        termination_time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 8)),
    )
    active = wait_state(metal, device["id"], ("active",))
    ip = public_ipv4(active)
    assert active["termination_time"] == device["termination_time"]
    wait_until(lambda: gone(metal, device["id"]), 60, "the device to end at its termination_time")
    assert not [r for r in sandbox.resources() if r.get("ip") == ip]


def test_failed_provisioning_fault(sandbox, metal):
    sandbox.set_faults({"fail_provisioning": 1})
    device = create(metal, sandbox)
    failed = wait_state(metal, device["id"], ("failed", "active"))
    assert failed["state"] == "failed"
    assert any(e["type"] == "provisioning.failed" for e in failed["provisioning_events"])
    assert failed["ip_addresses"] == []
    assert not [r for r in sandbox.resources() if str(r.get("owner", "")).endswith(device["id"])]
    # the knob was used up: the next device is fine
    ok = create(metal, sandbox, hostname="t2")
    assert wait_state(metal, ok["id"], ("failed", "active"))["state"] == "active"
    delete(metal, [device["id"], ok["id"]])


def test_slow_provisioning_fault(sandbox, metal):
    sandbox.set_faults({"provision_delay": 4})
    device = create(metal, sandbox)
    started = time.time()
    wait_state(metal, device["id"], ("active",))
    assert time.time() - started >= 4
    delete(metal, [device["id"]])


def test_error_bodies_and_paging(sandbox, metal):
    from packet.baseapi import ResponseError

    def status_and_body(call) -> tuple[int, Any, Any]:
        with pytest.raises(ResponseError) as info:
            call()
        return info.value.response.status_code, info.value.response.json(), info.value.response.headers

    status, body, _headers = status_and_body(lambda: sandbox.manager(token="nope").list_plans())
    assert (status, body) == (401, {"errors": ["Invalid authentication token"]})
    status, body, _headers = status_and_body(lambda: metal.call_api("devices/11111111-1111-1111-1111-111111111111"))
    assert (status, body) == (404, {"errors": ["Not found"]})
    for overrides, text in (
        ({"plan": "c9.huge.x86"}, "Plan 'c9.huge.x86' is not a valid plan"),
        ({"metro": "zz"}, "Metro 'zz' is not a valid metro"),
        ({"operating_system": "windows_2022"}, "Operating system 'windows_2022' is not a valid operating system"),
        ({"plan": "c3.large.arm64", "metro": "ny"}, "Plan c3.large.arm64 is not available in ny"),
        ({"spot_instance": True, "spot_price_max": 0.01}, "below the current spot market price"),
        ({"termination_time": "2001-01-01T00:00:00Z"}, "termination_time must be in the future"),
    ):
        status, body, _headers = status_and_body(lambda o=overrides: create(metal, sandbox, **o))
        assert status == 422
        assert any(text in e for e in body["errors"]), body
    sandbox.set_faults({"throttle": 2, "retry_after": 3})
    for _attempt in range(2):
        status, body, headers = status_and_body(metal.list_plans)
        assert status == 429 and body["errors"] and headers["Retry-After"] == "3"
    assert metal.list_plans()
    sandbox.set_faults({"server_error": 1, "server_error_status": 503})
    status, body, _headers = status_and_body(metal.list_metros)
    assert status == 503 and body["errors"]
    sandbox.set_faults({"server_error": 1, "server_error_match": "^POST "})
    assert metal.list_metros()  # GET does not match: not failed
    status, _body, _headers = status_and_body(lambda: create(metal, sandbox))
    assert status == 500
    assert sandbox.metal_resources() == []  # the failed create made nothing

    paged = [create(metal, sandbox, hostname="p%d" % i)["id"] for i in range(3)]
    page = metal.call_api("projects/%s/devices" % sandbox.project_id, params={"page": 1, "per_page": 2})
    assert len(page["devices"]) == 2 and page["meta"]["total"] == 3 and page["meta"]["next"]["href"]
    page = metal.call_api("projects/%s/devices" % sandbox.project_id, params={"page": 2, "per_page": 2})
    assert len(page["devices"]) == 1 and page["meta"]["next"] is None
    assert len(metal.list_all_devices(sandbox.project_id)) == 3  # packet-python follows meta.next
    delete(metal, paged)


def test_catalogue(metal):
    plans = {p.slug: p for p in metal.list_plans()}
    assert plans["c3.small.x86"].specs["features"]["kvm"] is True
    assert plans["c3.large.arm64"].specs["features"]["kvm"] is True
    assert plans["s3.xlarge.x86"].specs["features"]["kvm"] is False
    assert all(p.pricing["hour"] > 0 for p in plans.values())
    assert {"da", "sv", "ny", "am"} <= {m.code for m in metal.list_metros()}
    oses = {o.slug: o for o in metal.list_operating_systems()}
    assert {"debian_12", "nixos_23_11"} <= set(oses)
    assert "c3.large.arm64" in oses["nixos_23_11"].provisionable_on
    facilities = {f.code: f for f in metal.list_facilities()}
    assert facilities["da11"].features


def test_nixos_device_gets_host_key_and_userdata_file(sandbox, metal, tmp_path):
    collection_on_path()
    from ansible_collections.nixforge.images.plugins.module_utils._base._sshkeys import validate_host_key
    from ansible_collections.nixforge.images.plugins.module_utils._metal._userdata import render_nixos_userdata

    keys = write_keys(tmp_path)
    userdata = render_nixos_userdata(
        "emulator-test",
        "nixos_23_11",
        validate_host_key(keys["host_key_private"], keys["host_key_public"]),
        [keys["public_key"]],
        ["kvm", "big-parallel"],
    )
    device = create(metal, sandbox, operating_system="nixos_23_11", userdata=userdata, no_ssh_keys=True)
    ip = public_ipv4(wait_state(metal, device["id"], ("active",)))
    out = ssh(
        tmp_path,
        ip,
        keys["host_key_public"],
        "stat -c %a /etc/nixos/packet/userdata.nix; sha256sum < /etc/nixos/packet/userdata.nix",
    )
    mode, digest = out.split("\n")[0], out.split("\n")[1].split()[0]
    assert mode == "600"
    assert digest == hashlib.sha256(userdata.encode()).hexdigest()
    delete(metal, [device["id"]])


def test_script_userdata_and_poweroff_from_the_os(sandbox, metal, tmp_path):
    keys = write_keys(tmp_path)
    key = metal.create_project_ssh_key(sandbox.project_id, "emulator-test", keys["public_key"])
    device = create(metal, sandbox, project_ssh_keys=[key.id], userdata="#!/bin/sh\ntouch /root/script-ran\n")
    active = wait_state(metal, device["id"], ("active",))
    ip = public_ipv4(active)
    host_key = next(
        h["host_public_keys"]["ed25519"] for h in sandbox.control("GET", "/hosts")["hosts"] if h["ip"] == ip
    )
    out = wait_until(
        lambda: "yes" in ssh(tmp_path, ip, host_key, "test -e /root/script-ran && echo yes || echo no"),
        30,
        "the user data script to run",
    )
    assert out
    subprocess.run(
        [
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            str(tmp_path / "id_ed25519"),
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={tmp_path / 'known_hosts'}",
            f"root@{ip}",
            "systemctl poweroff || poweroff",
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    inactive = wait_state(metal, device["id"], ("inactive",), timeout=60)
    assert inactive["state"] == "inactive"  # still a device (and billed), as on Metal
    assert any(r["type"] == "device" and r["id"] == device["id"] for r in sandbox.metal_resources())
    metal.call_api("devices/%s/actions" % device["id"], "POST", {"type": "power_on"})
    wait_state(metal, device["id"], ("active",))
    delete(metal, [device["id"]], [key.id])

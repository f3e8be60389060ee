"""metal_device through ansible-playbook against the sandbox's Metal emulator.

Real HTTPS (packet-python trusting the sandbox CA through REQUESTS_CA_BUNDLE), real
hosts, real SSH with the host key the module injected and the controller pinned.
Credentials come from the environment (METAL_AUTH_TOKEN, METAL_PROJECT_ID,
METAL_API_URL), the way a user sets them. Every test ends with nothing of Metal left.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "sandbox"))

from nfsandbox.metal.testing import MetalSandbox, write_keys  # noqa: E402

pytestmark = [pytest.mark.sandbox]


@pytest.fixture(scope="module")
def sandbox(metal_sandbox: MetalSandbox) -> MetalSandbox:
    return metal_sandbox


@pytest.fixture
def clean(sandbox):
    """Faults cleared before and after; afterwards, proof that nothing of Metal is left."""
    sandbox.set_faults({})
    yield sandbox
    sandbox.set_faults({})
    deadline = time.time() + 60
    while sandbox.metal_resources() and time.time() < deadline:
        time.sleep(0.5)
    left = sandbox.leftovers()
    if left:  # do not let one test's leak fail the next ones too
        manager = sandbox.manager()
        for r in left:
            if r.get("type") == "device":
                manager.call_api("devices/%s" % r["id"], "DELETE")
            elif r.get("type") == "ssh_key":
                manager.call_api("ssh-keys/%s" % r["id"], "DELETE")
    assert left == []


def base(keys: dict[str, str], build_id: str, **extra: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "build_id": build_id,
        "ttl": "1h",
        "plan": "c3.small.x86",
        "metro": "da",
        "operating_system": "debian_12",
        "wait_timeout": 180,
        **keys,
    }
    args.update(extra)
    return {k: v for k, v in args.items() if v is not None}


def absent(build_id: str) -> dict[str, Any]:
    return {"build_id": build_id, "state": "absent", "wait_timeout": 120}


def ssh_root(workdir: Path, result: dict[str, Any], command: str) -> subprocess.CompletedProcess:
    device = result["device"]
    known = workdir / "known_hosts"
    known.write_text("%s %s\n" % (device["public_ipv4"], " ".join(device["host_public_key"].split()[:2])))
    return subprocess.run(
        [
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            str(workdir / "id_ed25519"),
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
            "%s@%s" % (device["ssh_user"], device["public_ipv4"]),
            command,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_create_adopt_absent(clean, tmp_path):
    keys = write_keys(tmp_path)
    results = clean.play(
        tmp_path,
        [
            base(keys, "it-create", spot_instance=True),
            base(keys, "it-create", spot_instance=True),  # same build id: adopted
        ],
    )[0]
    first, second = results
    assert not first.get("failed"), first.get("msg")
    assert first["changed"] is True and first["adopted"] is False
    dev = first["device"]
    assert dev["state"] == "active" and dev["ssh_user"] == "root"
    assert dev["plan"] == "c3.small.x86" and dev["metro"] == "da" and dev["architecture"] == "x86_64"
    assert dev["spot_instance"] is True and dev["price_per_hour"] == 0.75
    assert dev["termination_time"] == first["build"]["expires_at"]
    assert dev["tags"]["nixforge-build-id"] == "it-create"
    assert second["changed"] is False and second["adopted"] is True and second["device"]["id"] == dev["id"]

    login = ssh_root(tmp_path, first, "id -un; hostname")
    assert login.returncode == 0, login.stderr
    assert login.stdout.splitlines()[0] == "root"

    devices = [r for r in clean.metal_resources() if r["type"] == "device"]
    keys_left = [r for r in clean.metal_resources() if r["type"] == "ssh_key"]
    assert [d["id"] for d in devices] == [dev["id"]]
    assert [k["name"] for k in keys_left] == ["nixforge-it-create-ssh"]

    results = clean.play(tmp_path, [absent("it-create"), absent("it-create")])[0]
    assert results[0]["changed"] is True
    assert results[0]["removed"] == {"devices": [dev["id"]], "ssh_keys": [keys_left[0]["id"]]}
    assert results[1]["changed"] is False
    assert clean.metal_resources() == []


def test_check_mode_creates_nothing(clean, tmp_path):
    keys = write_keys(tmp_path)
    results, proc = clean.play(tmp_path, [base(keys, "it-check")], extra_args=["--check"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = results[0]
    assert result["changed"] is True and result["device"] == {}
    assert any(a.startswith("create device nixforge-it-check (c3.small.x86 in da") for a in result["actions"])
    assert clean.metal_resources() == []


def test_provisioning_failure_is_clear_and_leaves_nothing(clean, tmp_path):
    keys = write_keys(tmp_path)
    clean.set_faults({"fail_provisioning": 1})
    results = clean.play(tmp_path, [base(keys, "it-fail")])[0]
    result = results[0]
    assert result["failed"] is True
    assert result["msg"].startswith("Provisioning the device failed: device ")
    assert "ended in state 'failed'" in result["msg"]
    assert "nothing is left behind" in result["msg"]
    assert "Traceback" not in result["msg"]
    assert clean.metal_resources() == []


def test_termination_time_ends_the_device(clean, tmp_path):
    """The device goes away by itself at the build's expiry; absent then removes the key."""
    keys = write_keys(tmp_path)
    results = clean.play(tmp_path, [base(keys, "it-expiry", ttl="25s")])[0]
    result = results[0]
    assert not result.get("failed"), result.get("msg")
    device_id = result["device"]["id"]
    deadline = time.time() + 60
    while any(r["type"] == "device" for r in clean.metal_resources()) and time.time() < deadline:
        time.sleep(1)
    left = clean.metal_resources()
    assert [r["type"] for r in left] == ["ssh_key"], left
    assert not [r for r in clean.resources() if str(r.get("owner", "")).endswith(device_id)]
    results = clean.play(tmp_path, [absent("it-expiry")])[0]
    assert results[0]["changed"] is True and results[0]["removed"]["devices"] == []
    assert clean.metal_resources() == []


def test_an_expired_build_is_refused(clean, tmp_path):
    keys = write_keys(tmp_path)
    results = clean.play(tmp_path, [base(keys, "it-past", ttl=None, expires_at="2020-01-01T00:00:00Z")])[0]
    assert results[0]["failed"] is True
    assert results[0]["msg"].startswith("Parameter 'expires_at' failed")
    assert clean.metal_resources() == []


@pytest.mark.parametrize(
    ("faults", "what"),
    [
        ({"throttle": 4}, "429 on the first requests"),
        ({"server_error": 3, "server_error_status": 503}, "503 on the first requests"),
        ({"server_error": 2, "server_error_match": "^POST /projects/[^/]+/devices$"}, "500 on create"),
        ({"throttle": 2, "throttle_match": "^DELETE "}, "429 on delete"),
        ({"lost_answer": 1, "lost_answer_match": "^POST /projects/[^/]+/devices$"}, "create applied, answer lost"),
    ],
)
def test_throttling_and_server_errors_are_retried(clean, tmp_path, faults, what):
    keys = write_keys(tmp_path)
    clean.set_faults(faults)
    results = clean.play(tmp_path, [base(keys, "it-retry"), absent("it-retry")])[0]
    assert not results[0].get("failed"), (what, results[0].get("msg"))
    assert not results[1].get("failed"), (what, results[1].get("msg"))
    # the faults really fired, and a retried create made no second device
    served = clean.control("GET", "/faults/metal")["faults"]["served"]
    for knob in ("throttle", "server_error", "lost_answer"):
        assert served.get(knob, 0) == faults.get(knob, 0), (what, served)
    assert results[1]["removed"]["devices"] == [results[0]["device"]["id"]]
    assert clean.metal_resources() == []


@pytest.mark.parametrize(
    ("args", "parameter", "text"),
    [
        ({"plan": "c9.huge.x86"}, "plan", "Valid plans:"),
        ({"metro": "zz"}, "metro", "Valid metros: am, da, fr, ny, sv"),
        ({"operating_system": "windows_2022"}, "operating_system", "Valid operating systems for c3.small.x86"),
        ({"plan": "s3.xlarge.x86", "require_kvm": True}, "plan", "no hardware virtualisation (KVM)"),
        ({"plan": "c3.large.arm64", "metro": "ny"}, "metro", "Metros offering c3.large.arm64: da, sv"),
        ({"auth_token": "not-the-token"}, "auth_token", "refused the token (HTTP 401"),
    ],
)
def test_bad_input_fails_before_anything_is_created(clean, tmp_path, args, parameter, text):
    keys = write_keys(tmp_path)
    results, proc = clean.play(tmp_path, [base(keys, "it-bad", **args)])
    result = results[0]
    assert result["failed"] is True
    assert result["msg"].startswith("Parameter '%s' failed" % parameter), result["msg"]
    assert text in result["msg"]
    assert result["parameter"] == parameter
    assert clean.metal_resources() == []
    assert "Traceback" not in proc.stdout


def test_nixos_device_answers_with_the_pinned_host_key(clean, tmp_path):
    keys = write_keys(tmp_path)
    results = clean.play(
        tmp_path,
        [base(keys, "it-nixos", plan="c3.large.arm64", operating_system="nixos_23_11", require_kvm=True)],
    )[0]
    result = results[0]
    assert not result.get("failed"), result.get("msg")
    assert result["device"]["architecture"] == "aarch64" and result["device"]["kvm"] is True
    login = ssh_root(tmp_path, result, "grep -c nix.settings.system-features /etc/nixos/packet/userdata.nix")
    assert login.returncode == 0, login.stderr
    assert login.stdout.strip() == "1"
    results = clean.play(tmp_path, [absent("it-nixos")])[0]
    assert results[0]["changed"] is True
    assert clean.metal_resources() == []


def test_no_secret_in_verbose_output(clean, tmp_path):
    keys = write_keys(tmp_path)
    token = clean.token
    private_body = keys["host_key_private"].splitlines()[1]  # a line of the base64 body
    # token as a parameter (not only from the environment), a success and a failure, at -vvvv
    tasks = [
        base(keys, "it-secret", auth_token=token),
        {**base(keys, "it-secret-bad", auth_token=token), "plan": "c9.huge.x86"},
        {"build_id": "it-secret", "state": "absent", "auth_token": token},
    ]
    results, proc = clean.play(tmp_path, tasks, verbosity=4)
    assert not results[0].get("failed"), results[0].get("msg")
    assert results[1]["failed"] is True
    output = proc.stdout + proc.stderr
    assert "ESTABLISH LOCAL CONNECTION" in output  # really -vvvv
    assert token not in output
    assert private_body not in output
    assert "BEGIN OPENSSH PRIVATE KEY" not in output
    assert clean.metal_resources() == []

"""playbooks/build-sd-aarch64.yml end to end in the sandbox: EC2 spot builder (moto +
real hosts), Nix, the sandbox SD expression, fetch, teardown. Real SSH and real Nix.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from _pipeline import (
    ROOT,
    new_id,
    plain_debian,
    playbook_env,
    resources_of,
    run_playbook,
    run_with_spot_notice,
    sandbox_env,
    set_faults,
    slow_module,
)
from _record import failures, recording, records, result_of, results_of

pytestmark = [pytest.mark.sandbox, pytest.mark.slow, pytest.mark.spread]

PLAYBOOK = ROOT / "playbooks" / "build-sd-aarch64.yml"
MKIMAGE = ROOT / "roles" / "nixos_image" / "files" / "images" / "sandbox" / "mkimage.py"
# A secret nobody else uses, so that finding it in the output means it leaked (moto
# accepts any credentials).
SECRET = "nfTEST" + secrets.token_hex(16)

PROVISION_ONLY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - ansible.builtin.include_role:
        name: nixforge.images.builder_host
"""


@pytest.fixture(scope="module")
def env(sandbox_instance: object) -> dict[str, str]:
    out = sandbox_env()
    assert out is not None
    out["AWS_SECRET_ACCESS_KEY"] = SECRET
    return out


@pytest.fixture(autouse=True)
def _no_faults(env: dict[str, str]) -> Any:
    set_faults(env, "ec2", {})
    yield
    set_faults(env, "ec2", {})


def run(env: dict[str, str], tmp_path: Path, build_id: str, *args: str, **extra: Any) -> subprocess.CompletedProcess:
    variables = {
        "nixforge_build_id": build_id,
        "nixforge_output_dir": str(tmp_path / "artifacts"),
        "builder_host_state_dir": str(tmp_path / "state"),
        **extra,
    }
    return run_playbook(PLAYBOOK, recording(playbook_env(env), tmp_path / "record.jsonl"), variables, *args)


def recorded(tmp_path: Path) -> list[dict[str, Any]]:
    """The task results of the runs made with run() in this test."""
    return records(tmp_path / "record.jsonl")


def failure_message(tmp_path: Path) -> str:
    """The message the play stopped with (its last failed task), whitespace folded."""
    failed = failures(recorded(tmp_path))
    assert failed, "no task failed"
    return " ".join(str(failed[-1]["result"].get("msg", "")).split())


def ec2_client(env: dict[str, str]) -> Any:
    import boto3

    return boto3.client(
        "ec2",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def instances_ever(env: dict[str, str], build_id: str) -> list[dict[str, Any]]:
    """Every instance of the build, terminated ones included (moto keeps them listed)."""
    pages = ec2_client(env).describe_instances(Filters=[{"Name": "tag:nixforge-build-id", "Values": [build_id]}])
    return [i for r in pages["Reservations"] for i in r["Instances"]]


def summary(tmp_path: Path) -> dict[str, str]:
    """The lines of the Summary task's message (`Key:   value`), from its recorded result."""
    lines = result_of(recorded(tmp_path), "Summary", "ok")["result"]["msg"]
    out = {}
    for line in lines:
        key, _sep, value = " ".join(line.split()).partition(": ")
        out[key] = value.strip()
    keys = {"Image", "Size", "sha256", "Partitions", "Builder", "Timings", "Price", "Elapsed", "Cost (est)", "Build id"}
    assert keys <= set(out), out
    return out


def check_image(path: Path, sha256: str) -> None:
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == sha256
    assert data[:4] == b"\x28\xb5\x2f\xfd"  # zstd frame
    raw = subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=True).stdout
    assert raw[510:512] == b"\x55\xaa"  # MBR boot signature


def test_end_to_end_with_vvvv(env: dict[str, str], tmp_path: Path) -> None:
    """Succeeds, the fetched image matches the builder's sha256, nothing is left, and
    -vvvv shows neither the AWS secret key nor a private SSH key."""
    build_id = new_id("t-sd")
    # on Debian's own AMI, as make demo: nix_bootstrap installs Nix
    proc = run(plain_debian(env), tmp_path, build_id, "-vvvv")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, proc.stdout[-10000:] + proc.stderr[-3000:]
    plan = result_of(recorded(tmp_path), "Check the host and the options, plan the setup and install", "ok")
    assert plan["result"]["installed"][:2] == ["nix-bin", "nix-setup-systemd"], plan
    s = summary(tmp_path)
    image = Path(s["Image"])
    assert image.is_file() and image.parent == tmp_path / "artifacts"
    assert image.name.endswith(".img.zst")
    # the sha256 the builder computed (reported in the summary) is the fetched file's
    check_image(image, s["sha256"])
    assert str(image.stat().st_size) in s["Size"]
    # checked on the controller (sd_image_check): both partitions named with file system and label
    assert re.fullmatch(r"1: FAT32 FIRMWARE, .*; 2: ext4 NIXOS_SD, .*\(type 0x83 Linux, bootable\)", s["Partitions"]), s
    assert "USD/h" in s["Price"] and s["Cost (est)"].endswith("USD")
    # the cost is the builder's time (start to teardown) at its price, not the whole run's,
    # billed as EC2 bills: per second with a 60-second minimum
    up = int(re.search(r"builder up (\d+) s", s["Timings"]).group(1))
    billed = max(up, 60)
    assert abs(float(s["Cost (est)"].split()[0]) - float(s["Price"].split()[0]) * billed / 3600) < 0.0002, s
    assert resources_of(build_id) == []
    assert all(i["State"]["Name"] == "terminated" for i in instances_ever(env, build_id))
    # no secret at any verbosity
    assert SECRET not in output
    assert "PRIVATE KEY-----" not in output
    assert not (tmp_path / "state" / "id_ed25519").exists()
    assert not (tmp_path / "state" / "ssh_host_ed25519_key").exists()
    # never an AMI
    images = ec2_client(env).describe_images(Owners=["self"])["Images"]
    assert [i for i in images if build_id in json.dumps(i)] == []


# The /etc/nixforge-image text mkimage.py writes for a module (argv: its folder, the module).
MARKER = "import sys; sys.path.insert(0, sys.argv[1]); import mkimage; print(mkimage.marker('sd', sys.argv[2]), end='')"


def test_remote_build_mode(env: dict[str, str], tmp_path: Path) -> None:
    """nixforge_build_mode=remote: the controller's Nix builds with no build slots of its
    own, through the EC2 builder (an x86_64 host offering aarch64-linux): the output is
    found in the builder's store, and the image holds what the sandbox definition writes
    for this module (its /etc/nixforge-image, computed here with mkimage.py). Not byte for
    byte: the EC2 builder runs Debian 13, whose mke2fs and zstd write other bytes than the
    controller's."""
    build_id = new_id("t-sdrm")
    # A module of its own makes a derivation no store has yet, so it must really be built.
    module = tmp_path / "module" / "default.nix"
    module.parent.mkdir()
    module.write_text('{ ... }: { networking.hostName = "sd-remote-%s"; }\n' % secrets.token_hex(4))
    marker = subprocess.run(
        [sys.executable, "-c", MARKER, str(MKIMAGE.parent), str(module.parent)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert marker.startswith("nixforge sandbox image (sd)\nmodule: default.nix sha256:")
    proc = run(env, tmp_path, build_id, nixforge_build_mode="remote", nixos_image_module=str(module))
    assert proc.returncode == 0, proc.stdout[-12000:] + proc.stderr[-3000:]
    s = summary(tmp_path)
    image = Path(s["Image"])
    assert image.parent == tmp_path / "artifacts"
    check_image(image, s["sha256"])
    raw = subprocess.run(["zstd", "-dc", str(image)], capture_output=True, check=True).stdout
    assert marker.encode() in raw
    assert s["Partitions"].startswith("1: FAT32 FIRMWARE, "), s  # the image copied out of the store is checked too
    # the output is in the builder's store: the builder built it (the controller has no build slots)
    address = s["Built on"].split()[0]
    assert s["Built on"] == f"{address} (remote build from the controller)", s
    assert address.startswith("10.213."), address  # a sandbox host, not the controller
    assert "Make the builder a Nix remote builder" in proc.stdout
    assert resources_of(build_id) == []
    assert not (tmp_path / "state" / "nix-client").exists()  # machines file and key copy removed


def test_rerun_adopts_the_running_builder(env: dict[str, str], tmp_path: Path) -> None:
    build_id = new_id("t-adopt")
    first = tmp_path / "provision.yml"
    first.write_text(PROVISION_ONLY)
    variables = {"nixforge_build_id": build_id, "builder_host_state_dir": str(tmp_path / "state")}
    try:
        proc = run_playbook(first, playbook_env(env), variables)
        assert proc.returncode == 0, proc.stdout[-6000:]
        assert len(instances_ever(env, build_id)) == 1
        proc = run(env, tmp_path, build_id)
        assert proc.returncode == 0, proc.stdout[-10000:] + proc.stderr[-3000:]
        assert summary(tmp_path)["Builder"].endswith("(adopted)")
        # the pre-baked builder image has Nix: nix_bootstrap installs nothing
        # (on the builder: localhost, which only keeps the build play alive, skips the imported role's tasks too)
        [plan] = results_of(recorded(tmp_path), "Check the host and the options, plan the setup and install", "ok")
        assert plan["result"]["missing"] == [] and plan["result"]["installed"] == [], plan
        assert plan["result"]["changed"] is False
        assert len(instances_ever(env, build_id)) == 1  # the same instance, no second one
    finally:
        reap = run_playbook(ROOT / "playbooks" / "reap.yml", playbook_env(env), variables)
        assert reap.returncode == 0, reap.stdout[-4000:]
    assert resources_of(build_id) == []


def test_failing_build_leaves_nothing(env: dict[str, str], tmp_path: Path) -> None:
    build_id = new_id("t-fail")
    proc = run(env, tmp_path, build_id, nixos_image_attribute="nixosConfigurations.nope.config.system.build.sdImage")
    assert proc.returncode != 0
    message = failure_message(tmp_path)
    assert message.startswith(f"Build {build_id} failed and everything it created was removed. "), message
    # the reason: the build task's own error, naming the attribute that does not exist
    build = result_of(recorded(tmp_path), "Build ", "failed")["result"]["msg"]
    assert "nixosConfigurations.nope" in build or "'nope'" in build, build
    assert " ".join(build.split())[:200] in message
    assert "The provider ended the builder" not in message
    assert resources_of(build_id) == []
    assert all(i["State"]["Name"] == "terminated" for i in instances_ever(env, build_id))


def test_no_spot_capacity_anywhere(env: dict[str, str], tmp_path: Path) -> None:
    build_id = new_id("t-nocap")
    set_faults(env, "ec2", {"capacity": [{"market": "spot"}]})
    proc = run(env, tmp_path, build_id)
    assert proc.returncode != 0
    message = failure_message(tmp_path)
    assert message.startswith(f"Build {build_id}: provisioning the builder failed, and everything it had"), message
    launch = result_of(recorded(tmp_path), "Launch or adopt the build's EC2 instance", "failed")["result"]
    assert "InsufficientInstanceCapacity" in launch["msg"], launch["msg"]
    assert " ".join(launch["msg"].split())[:120] in message
    assert resources_of(build_id) == []
    assert instances_ever(env, build_id) == []


def test_no_capacity_on_first_candidate_only(env: dict[str, str], tmp_path: Path) -> None:
    build_id = new_id("t-cap1")
    set_faults(env, "ec2", {"capacity": [{"instance_type": "a1.2xlarge", "market": "spot"}]})
    proc = run(env, tmp_path, build_id)
    assert proc.returncode == 0, proc.stdout[-10000:] + proc.stderr[-3000:]
    launch = result_of(recorded(tmp_path), "Launch or adopt the build's EC2 instance", "ok")["result"]
    errors = launch["candidate_errors"]
    # a1.2xlarge was tried (in each zone it is offered in) and had no spot capacity; nothing else failed
    assert errors and {(e["instance_type"], e["lifecycle"], e["code"]) for e in errors} == {
        ("a1.2xlarge", "spot", "InsufficientInstanceCapacity")
    }, errors
    assert len({e["availability_zone"] for e in errors}) == len(errors)
    assert launch["instance_type"] != "a1.2xlarge"
    assert summary(tmp_path)["Builder"].startswith(launch["instance_type"] + " ")
    assert resources_of(build_id) == []


@pytest.mark.parametrize(
    ("extra", "env_change", "named"),
    [
        ({"builder_host_ec2_region": "mars-north-1"}, {}, "Parameter 'region'"),
        ({"builder_host_ssh_cidr": "10.0.0.300/33"}, {}, "builder_host_ssh_cidr"),
        ({"builder_host_ec2_instance_types": ["c5.2xlarge"]}, {}, "Parameter 'instance_types'"),
        ({"builder_host_ec2_debian_release": "11"}, {}, "builder_host_ec2_debian_release"),
        ({"nixforge_build_id": "Not_A_Valid_Id"}, {}, "nixforge_build_id"),
        (
            {},
            {
                "AWS_ACCESS_KEY_ID": "",
                "AWS_SECRET_ACCESS_KEY": "",
                "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
                "AWS_CONFIG_FILE": "/nonexistent",
            },
            "credentials",
        ),
    ],
    ids=["region", "cidr", "arch", "debian", "build-id", "credentials"],
)
def test_bad_input_fails_before_creating(
    env: dict[str, str], tmp_path: Path, extra: dict, env_change: dict, named: str
) -> None:
    build_id = new_id("t-bad")
    variables = {
        "nixforge_build_id": build_id,
        "nixforge_output_dir": str(tmp_path / "artifacts"),
        "builder_host_state_dir": str(tmp_path / "state"),
        **extra,
    }
    run_env = playbook_env(env)
    for key, value in env_change.items():
        if value:
            run_env[key] = value
        else:
            run_env.pop(key, None)
    proc = run_playbook(PLAYBOOK, recording(run_env, tmp_path / "record.jsonl"), variables)
    assert proc.returncode != 0
    message = failure_message(tmp_path)
    assert re.search(r"(?<!\w)%s(?!\w)" % re.escape(named), message), message  # the name, not part of another
    # refused before anything was rented: the EC2 module never ran, or refused its input
    launched = [r for r in recorded(tmp_path) if r["task"].endswith("Launch or adopt the build's EC2 instance")]
    assert all(r["status"] == "failed" and not r["result"].get("instance_id") for r in launched), launched
    # the id the run used (the build-id case overrides it): nothing of it exists
    used_id = variables["nixforge_build_id"]
    assert instances_ever(env, used_id) == []
    assert resources_of(used_id) == []


@pytest.mark.parametrize("retry", [True, False], ids=["retried", "retry-off"])
def test_spot_interruption_mid_build_tears_down_and_says_so(env: dict[str, str], tmp_path: Path, retry: bool) -> None:
    """EC2 gives the spot builder its interruption notice while Nix builds: the build watcher
    reads it from the builder's instance metadata (spot/instance-action) at its next look,
    reports "interrupted by EC2 (spot)" and the play tears that builder down without waiting
    for the build or for EC2. The notice lasts longer than the build would (the sandbox
    reclaims only after notice_seconds), so a watcher that missed it would let the build
    succeed, and EC2 never ends the instance: the teardown does.

    retried (the default): the build runs once more, with the same build id, on a fresh
    builder of another candidate type, succeeds, and the summary shows both builders and
    their cost. retry-off (nixforge_spot_retry: false): the play fails saying so."""
    build_id = new_id("t-intr")
    variables = {
        "nixforge_build_id": build_id,
        "nixforge_output_dir": str(tmp_path / "artifacts"),
        "builder_host_state_dir": str(tmp_path / "state"),
        "nixos_image_module": str(module := slow_module(tmp_path, 60)),
        "nixforge_spot_retry": retry,
    }
    run_env = recording(playbook_env(env), tmp_path / "record.jsonl")
    # count 1: one interruption (the fresh builder is not interrupted again)
    notice = {"build_id": build_id, "after_seconds": 2, "notice_seconds": 3600, "count": 1}
    # the retried build runs the module without the switch (no second wait)
    run = run_with_spot_notice(PLAYBOOK, run_env, variables, notice, fast_retry=module if retry else None)
    output, served = run.output, run.served
    assert run.armed, output[-6000:]
    runs = recorded(tmp_path)
    launched = [r["result"] for r in results_of(runs, "Launch or adopt the build's EC2 instance", "ok")]
    first = launched[0]["instance_id"]
    assert served["served"]["spot_interruption_notice"] == {first: 1}, served
    assert "spot_interruption" not in served["served"], served  # EC2 never reclaimed it: the teardown ended it
    assert [e["detail"]["instance-id"] for e in served["events"]] == [first]
    interrupted = [r for r in failures(runs) if r["result"].get("interrupted")]
    assert [r["result"]["exit_code"] for r in interrupted] == [-2], failures(runs)
    assert json.loads(interrupted[0]["result"]["interrupted"]["notice"])["action"] == "terminate"
    assert "interrupted by EC2 (spot)" in interrupted[0]["result"]["msg"]
    teardowns = [r["result"] for r in results_of(runs, "Remove every EC2 resource of the build", "ok")]
    assert teardowns[0]["removed"]["instances"] == [first] and teardowns[0]["ended"] == [], teardowns[0]
    if retry:
        assert run.returncode == 0, output[-6000:]
        assert len(launched) == 2 and len(teardowns) == 2, (launched, teardowns)
        second = launched[1]
        assert second["instance_id"] != first and second["instance_type"] != launched[0]["instance_type"]
        assert second["build"]["build_id"] == build_id  # the same build id
        assert teardowns[1]["removed"]["instances"] == [second["instance_id"]]
        lines_of = summary(tmp_path)
        assert lines_of["Builder"].startswith(second["instance_type"] + " (ec2, spot"), lines_of
        earlier = lines_of["Interrupted"]
        assert (
            earlier.startswith(launched[0]["instance_type"] + " (ec2, spot") and "interrupted by EC2 (spot)" in earlier
        )
        assert (tmp_path / "artifacts").is_dir() and list((tmp_path / "artifacts").glob("*.img.zst"))
    else:
        assert run.returncode != 0
        assert len(launched) == 1, launched
        message = failure_message(tmp_path)
        assert message.startswith(f"Build {build_id} failed and everything it created was removed."), message
        assert "interrupted by EC2 (spot)" in message, message
    assert resources_of(build_id) == []
    assert all(i["State"]["Name"] == "terminated" for i in instances_ever(env, build_id))


def test_builder_ends_itself_at_expiry_and_reap_removes_the_rest(env: dict[str, str], tmp_path: Path) -> None:
    """The controller provisions and vanishes: at expiry the builder powers itself off and
    EC2 terminates it (shutdown behaviour terminate); reap.yml without a build id then
    removes the security group, key pair and launch template that outlived it."""
    build_id = new_id("t-expire")
    provision = tmp_path / "provision.yml"
    provision.write_text(PROVISION_ONLY)
    variables = {
        "nixforge_build_id": build_id,
        "builder_host_state_dir": str(tmp_path / "state"),
        "builder_host_ttl": "1m",
    }
    proc = run_playbook(provision, playbook_env(env), variables)
    assert proc.returncode == 0, proc.stdout[-6000:]
    # nothing of ours runs now; the builder's own timer must end it
    deadline = time.monotonic() + 240
    while True:
        states = [(i["State"]["Name"], (i.get("StateReason") or {}).get("Code")) for i in instances_ever(env, build_id)]
        if states and all(state == "terminated" for state, _reason in states):
            break
        assert time.monotonic() < deadline, states
        time.sleep(3)
    assert states == [("terminated", "Client.InstanceInitiatedShutdown")]
    left = {r["type"] for r in resources_of(build_id)}
    assert {"security-group", "key-pair", "launch-template"} <= left, left
    # everything expired, found in the account (this controller's state dir plays no part)
    reap = run_playbook(ROOT / "playbooks" / "reap.yml", playbook_env(env), {"nixforge_reap_providers": ["ec2"]})
    assert reap.returncode == 0, reap.stdout[-6000:]
    assert build_id in reap.stdout
    assert resources_of(build_id) == []

"""The controller dies in the middle of a build: ansible-playbook and every process under
it get SIGKILL while Nix builds, so nothing of ours runs to clean up. playbooks/reap.yml
then finds the build in the provider accounts (this controller's state plays no part) and
removes everything; its report lists what it removed.

- The DigitalOcean pipeline on a Metal builder, reaped at once by build id.
- The SD pipeline on an EC2 spot builder, reaped without a build id: while the build's
  lifetime lasts, reap leaves all of it alone; once its expiry lies in the past (the test moves
  the expiry tags rather than waiting for a lifetime guessed against the machine's speed), reap
  removes all of it, the builder that still runs included. (That a builder ends itself at
  expiry is test_playbook_sd.py::test_builder_ends_itself_at_expiry_and_reap_removes_the_rest.)
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from _pipeline import (
    INVENTORY,
    ROOT,
    kill_tree,
    new_id,
    playbook_env,
    resources_of,
    run_playbook,
    slow_module,
)
from _record import recording, records, result_of
from nfsandbox.testing import start_playbook

pytestmark = [pytest.mark.sandbox, pytest.mark.slow, pytest.mark.spread]

REAP = ROOT / "playbooks" / "reap.yml"
# The last task before the Nix build starts on the builder (recorded with its role prefix).
BEFORE_BUILD = "Set up the host for Nix"


def kill_during_build(playbook: str, env: dict[str, str], tmp_path: Path, build_id: str, **extra: Any) -> None:
    """Start the pipeline on a 300 s build, wait until the build has started on the builder,
    SIGKILL it all."""
    variables = {
        "nixforge_build_id": build_id,
        "nixforge_output_dir": str(tmp_path / "artifacts"),
        "builder_host_state_dir": str(tmp_path / "state"),
        "nixos_image_module": str(slow_module(tmp_path, 300)),
        **extra,
    }
    record = tmp_path / "run.jsonl"
    run_env = playbook_env(env)
    args = ["-i", str(INVENTORY), str(ROOT / "playbooks" / playbook), "-e", json.dumps(variables)]
    proc = start_playbook(
        args,
        recording(run_env, record),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 600
    try:
        while not [r for r in records(record) if BEFORE_BUILD in r["task"] and r["status"] == "ok"]:
            assert proc.poll() is None, f"the playbook ended before its build: {records(record)[-3:]}"
            assert time.monotonic() < deadline, "the build never started"
            time.sleep(0.5)
        time.sleep(5)  # the build runs now (it lasts 300 s)
        assert proc.poll() is None
    finally:
        kill_tree(proc.pid)
        proc.wait()
    # nothing of ours cleaned up: the teardown never ran
    cleanup = re.compile(r"(^|: )(Tear down|Remove the build|Publish the teardown result)")
    assert not [r["task"] for r in records(record) if cleanup.search(r["task"])]


def reap(env: dict[str, str], tmp_path: Path, variables: dict[str, Any]) -> dict[str, Any]:
    """Run reap.yml; its report (per provider: the lines of what it removed)."""
    record = tmp_path / "reap.jsonl"
    proc = run_playbook(REAP, recording(playbook_env(env), record), variables)
    assert proc.returncode == 0, proc.stdout[-6000:]
    return result_of(records(record), "Report what was removed per provider", "ok")["result"]["msg"]


def test_do_pipeline_killed_mid_build_then_reaped_by_build_id(env: dict[str, str], tmp_path: Path) -> None:
    build_id = new_id("t-kill-do")
    kill_during_build("build-do-image.yml", env, tmp_path, build_id, builder_host_provider="metal")
    left = {r["type"] for r in resources_of(build_id)}
    assert {"device", "ssh_key"} <= left, left  # the paid machine is still there

    report = reap(env, tmp_path, {"nixforge_build_id": build_id})
    assert report["mode"] == "removed"
    assert any(build_id in line and "device" in line for line in report["metal"]), report
    assert resources_of(build_id) == []


def expire_now(env: dict[str, str], build_id: str) -> list[str]:
    """Move the expiry of every EC2 resource of the build into the past (as time passing
    would); the ids retagged. Fleets carry tags too but EC2 has no tag filter for them."""
    import boto3

    ec2 = boto3.client(
        "ec2",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    ids = [r["id"] for r in resources_of(build_id) if r["provider"] == "ec2"]
    past = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 60))
    ec2.create_tags(Resources=ids, Tags=[{"Key": "nixforge-expires-at", "Value": past}])
    return ids


def test_sd_pipeline_killed_mid_build_then_reaped_after_expiry(env: dict[str, str], tmp_path: Path) -> None:
    build_id = new_id("t-kill-sd")
    # The default lifetime (hours): however slow this machine, the build is not expired before
    # the test moves its expiry (a one-minute lifetime once ran out during a first boot).
    kill_during_build("build-sd-aarch64.yml", env, tmp_path, build_id)
    parts = resources_of(build_id)
    assert {"instance", "security-group", "key-pair", "launch-template", "fleet"} <= {r["type"] for r in parts}, parts

    # While the lifetime lasts, reap without a build id leaves every part of the build alone.
    early = reap(env, tmp_path, {"nixforge_reap_providers": ["ec2"]})
    assert not any(build_id in line for line in early["ec2"]), early
    assert sorted(r["id"] for r in resources_of(build_id)) == sorted(r["id"] for r in parts)

    # Expired: reap removes everything of it, the instance that still runs included.
    assert [r["state"] for r in resources_of(build_id) if r["type"] == "instance"] == ["running"]
    expire_now(env, build_id)
    late = reap(env, tmp_path, {"nixforge_reap_providers": ["ec2"]})
    assert late["mode"] == "removed"
    assert {line.split()[1] for line in late["ec2"] if line.startswith(build_id + ":")} >= {
        "instance",
        "fleet",
        "security_group",
        "key_pair",
        "launch_template",
    }, late
    assert resources_of(build_id) == []

"""ec2_spot_host's nested_virtualization against the sandbox's EC2 (moto + real hosts).

What a user relies on: the CPU option reaches EC2 through the launch template (the
instance shows ``CpuOptions.NestedVirtualization=enabled``), the builder is reported as a
KVM builder, bare-metal candidates go through a second template without the option, a
type without support is refused before anything exists, and spot refusing the option
falls back to on-demand like a capacity error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest
from nfsandbox import testing
from test_ec2_spot_host import Keys, Runner, assert_failed_naming, build_id, keys, of_build, runner, ssh

pytestmark = pytest.mark.sandbox
ec2_sandbox = testing.ec2_sandbox  # the fixture, shared by the tests of every EC2 part
__all__ = ["build_id", "keys", "runner"]  # fixtures of test_ec2_spot_host, used here too

NESTED = {"architecture": "x86_64", "nested_virtualization": True}


def ec2_client(run: Runner) -> Any:
    env = run.env
    return boto3.client(
        "ec2",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id=env.get("AWS_ACCESS_KEY_ID", "testing"),
        aws_secret_access_key="testing",
    )


def describe(run: Runner, instance_id: str) -> dict[str, Any]:
    reply = ec2_client(run).describe_instances(InstanceIds=[instance_id])
    return reply["Reservations"][0]["Instances"][0]


def template_data(run: Runner, template_id: str) -> dict[str, Any]:
    versions = ec2_client(run).describe_launch_template_versions(LaunchTemplateId=template_id)
    return versions["LaunchTemplateVersions"][0]["LaunchTemplateData"]


def test_nested_virtualization_is_asked_for_recorded_and_reported(
    runner: Runner, keys: Keys, build_id: str, ec2_sandbox, tmp_path: Path
):
    args = runner.present_args(build_id, instance_types=["c8i.2xlarge", "c5.metal"], **NESTED)
    result, _proc = runner.run(args)
    assert not result.get("failed"), result.get("msg")
    assert result["instance_type"] == "c8i.2xlarge", result  # the cheaper kind, first
    assert result["kvm"] is True and result["nested_virtualization"] is True

    # the option went to EC2 in the launch template, and the instance carries it
    templates = result["launch_template_ids"]
    assert sorted(templates) == ["nested", "plain"]
    assert template_data(runner, templates["nested"])["CpuOptions"] == {"NestedVirtualization": "enabled"}
    assert "CpuOptions" not in template_data(runner, templates["plain"])  # bare metal: EC2 refuses the option
    assert result["launch_template_id"] == templates["nested"]
    assert describe(runner, result["instance_id"])["CpuOptions"]["NestedVirtualization"] == "enabled"

    # the builder has /dev/kvm exactly when the sandbox machine's KVM works (its timed probe)
    login = ssh(
        result, keys, tmp_path / "known_hosts", "cat /etc/nixforge-sandbox.json; echo; test -c /dev/kvm && echo KVM"
    )
    assert login.returncode in (0, 1), login.stderr
    meta = json.loads(login.stdout.splitlines()[0])
    assert meta["kvm"] is ("KVM" in login.stdout.split()), login.stdout

    gone, _proc = runner.run({"build_id": build_id, "state": "absent"})
    assert not gone.get("failed"), gone.get("msg")
    assert sorted(gone["removed"]["launch_templates"]) == sorted(templates.values())
    assert of_build(ec2_sandbox, build_id) == []


@pytest.mark.parametrize(
    ("types", "refused"),
    [(["c8i.2xlarge", "c6i.2xlarge"], "c6i.2xlarge"), (["m6i.4xlarge"], "m6i.4xlarge")],
)
def test_a_type_without_nested_virtualization_is_refused_before_anything_exists(
    runner: Runner, build_id: str, ec2_sandbox, types: list[str], refused: str
):
    before = ec2_sandbox.resources()
    result, _proc = runner.run(runner.present_args(build_id, instance_types=types, **NESTED))
    assert_failed_naming(result, "instance_types")
    assert "%s supports no nested virtualization" % refused in result["msg"], result["msg"]
    size = refused.split(".")[1]
    assert "c8i.%s" % size in result["msg"] and "Nothing was created" in result["msg"], result["msg"]
    assert of_build(ec2_sandbox, build_id) == []
    assert ec2_sandbox.resources() == before  # `sandboxctl resources --json`: nothing new anywhere


def test_nested_virtualization_with_an_arm64_image_is_refused_before_any_call(
    runner: Runner, build_id: str, ec2_sandbox
):
    result, _proc = runner.run(runner.present_args(build_id, nested_virtualization=True))  # default arm64
    assert_failed_naming(result, "architecture")
    assert of_build(ec2_sandbox, build_id) == []


def test_spot_refusing_the_option_falls_back_to_on_demand(runner: Runner, build_id: str, ec2_sandbox):
    """Whether EC2 lets spot capacity carry the option is not settled in its documentation
    (docs/build-do-image.md): a spot refusal takes the candidate out like a capacity error."""
    message = "Nested virtualization is not supported for Spot Instances."
    fault = {"instance_type": "c8i.*", "market": "spot", "code": "UnsupportedOperation", "message": message}
    ec2_sandbox.set_faults("ec2", {"capacity": [fault]})
    args = runner.present_args(build_id, instance_types=["c8i.2xlarge"], on_demand_fallback=True, **NESTED)
    result, _proc = runner.run(args)
    assert not result.get("failed"), result.get("msg")
    assert result["lifecycle"] == "on-demand" and result["nested_virtualization"] is True
    assert {e["code"] for e in result["candidate_errors"]} == {"UnsupportedOperation"}
    assert any("falling back to on-demand" in w for w in result.get("warnings", [])), result.get("warnings")
    gone, _proc = runner.run({"build_id": build_id, "state": "absent"})
    assert not gone.get("failed"), gone.get("msg")
    assert of_build(ec2_sandbox, build_id) == []

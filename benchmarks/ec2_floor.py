"""The cloud's own floor: what any tool must wait for on the sandbox's EC2, without Ansible.

    python -m benchmarks.ec2_floor [--playbook sd|do] [--json FILE]
    (benchmarks.pipeline runs it beside each pipeline: its baseline, measured in the same run)

The smallest flow that gives a builder and takes it away again, as Packer's amazon-ebs spot
flow does it, written directly against boto3 and ssh: a security group allowing SSH from the
controller, a spot instance of the pipeline's first instance type and Debian image (the user
data carries the client key and the host key), wait until SSH logs in, one command, terminate,
wait until EC2 says terminated, delete the group (EC2 refuses while the instance holds it).

Each phase is timed. A pipeline cannot take less than this for its builder, so "our overhead"
minus this floor is what our orchestration adds: the seconds issue 19 asks about.
Not a test: the machine's load moves the numbers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "sandbox"))

from nfsandbox.testing import SandboxHandle, ssh_keypair  # noqa: E402

from benchmarks._sandbox import sandbox_up  # noqa: E402

DEBIAN_OWNER = "136693071363"
# What each pipeline's builder is in the sandbox by default (plugin_utils/_pipeline.py and
# module_utils/_ec2/_fleet.py): its first instance type, and Debian 13 for its architecture.
FLOOR_BUILDERS = {
    "sd": {"instance_type": "a1.2xlarge", "image": "debian-13-arm64-*", "nested": False},
    "do": {"instance_type": "c8i.2xlarge", "image": "debian-13-amd64-*", "nested": True},
}
TAG = "nixforge-bench-floor"
# Only bounds a hang; every wait below ends on what it waits for.
HANG_GUARD = 300.0


def log(message: str) -> None:
    print(message, flush=True)


def until(what: str, check: Callable[[], Any], interval: float = 0.2) -> Any:
    """Poll ``check`` until it returns something true (as a tool polling EC2 would)."""
    deadline = time.monotonic() + HANG_GUARD
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: not after {HANG_GUARD:.0f} s")
        time.sleep(interval)


def _user_data(directory: Path, public: dict[str, str]) -> str:
    host_private = "\n".join("    " + line for line in (directory / "host").read_text().splitlines())
    return (
        "#cloud-config\nssh_authorized_keys:\n  - %s\nssh_keys:\n  ed25519_private: |\n%s\n  ed25519_public: %s\n"
        % (public["client"], host_private, public["host"])
    )


def _ssh(directory: Path, address: str, command: str) -> bool:
    """``command`` over SSH with the client key, the host key pinned (known_hosts written once)."""
    argv = ["ssh", "-F", "/dev/null", "-i", str(directory / "client"), "-o", "IdentitiesOnly=yes"]
    argv += ["-o", f"UserKnownHostsFile={directory / 'known_hosts'}", "-o", "StrictHostKeyChecking=yes"]
    argv += ["-o", "BatchMode=yes", "-o", "ConnectTimeout=2", f"admin@{address}", command]
    return subprocess.run(argv, capture_output=True, timeout=30, check=False).returncode == 0


def _instance(ec2: Any, instance_id: str) -> dict[str, Any]:
    return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]


def _delete_group(ec2: Any, group: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        ec2.delete_security_group(GroupId=group)
        return True
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "DependencyViolation":
            raise
        return False


def measure(sandbox: SandboxHandle, playbook: str = "sd") -> dict[str, Any]:
    """The floor's phases in seconds, for the pipeline's builder; nothing is left afterwards."""
    import boto3

    builder = FLOOR_BUILDERS[playbook]
    endpoint = sandbox.state()["endpoints"]["ec2_endpoint"]
    env = sandbox.env()
    ec2 = boto3.client(
        "ec2",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=env.get("AWS_ACCESS_KEY_ID", "testing"),
        aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY", "testing"),
    )
    phases: dict[str, float] = {}
    group = instance_id = None
    with tempfile.TemporaryDirectory(prefix="nfbench-floor-") as tmp:
        directory = Path(tmp)
        public = {name: ssh_keypair(directory, name, name)[1] for name in ("client", "host")}
        images = ec2.describe_images(Owners=[DEBIAN_OWNER], Filters=[{"Name": "name", "Values": [builder["image"]]}])
        image = max(images["Images"], key=lambda i: i["CreationDate"])["ImageId"]
        started = time.monotonic()
        try:
            group = ec2.create_security_group(GroupName=f"{TAG}-{time.time_ns()}", Description="bench floor")["GroupId"]
            ec2.authorize_security_group_ingress(
                GroupId=group, IpProtocol="tcp", FromPort=22, ToPort=22, CidrIp="%s/32" % sandbox.instance.gateway
            )
            launch: dict[str, Any] = {
                "ImageId": image,
                "InstanceType": builder["instance_type"],
                "MinCount": 1,
                "MaxCount": 1,
                "UserData": _user_data(directory, public),  # boto3 encodes it in base64
                "SecurityGroupIds": [group],
                "InstanceMarketOptions": {"MarketType": "spot"},
                "TagSpecifications": [{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": TAG}]}],
            }
            if builder["nested"]:
                launch["CpuOptions"] = {"NestedVirtualization": "enabled"}
            instance_id = ec2.run_instances(**launch)["Instances"][0]["InstanceId"]
            running = until("running", lambda: (i := _instance(ec2, instance_id))["State"]["Name"] == "running" and i)
            address = running["PublicIpAddress"]
            host_key = " ".join(public["host"].split()[:2])
            (directory / "known_hosts").write_text(f"{address} {host_key}\n")
            until("SSH login", lambda: _ssh(directory, address, "true"))
            phases["launch_until_ssh"] = time.monotonic() - started
            mark = time.monotonic()
            if not _ssh(directory, address, "uname -m && sudo -n true"):
                raise SystemExit("the floor's command failed on the instance")
            phases["one_command"] = time.monotonic() - mark
            mark = time.monotonic()
            ec2.terminate_instances(InstanceIds=[instance_id])
            until("terminated", lambda: _instance(ec2, instance_id)["State"]["Name"] == "terminated")
            instance_id = None
            phases["terminate_until_terminated"] = time.monotonic() - mark
            mark = time.monotonic()
            until("security group deleted", lambda: _delete_group(ec2, group))
            group = None
            phases["security_group_after"] = time.monotonic() - mark
        finally:  # a failed run leaves nothing either
            if instance_id:
                ec2.terminate_instances(InstanceIds=[instance_id])
                until("terminated", lambda: _instance(ec2, instance_id)["State"]["Name"] == "terminated")
            if group:
                until("security group deleted", lambda: _delete_group(ec2, group))
        phases["total"] = time.monotonic() - started
    return {name: round(seconds, 2) for name, seconds in phases.items()}


def print_floor(floor: dict[str, Any]) -> None:
    log(
        "EC2 floor (boto3 + ssh, no Ansible): %.1f s = launch until SSH %.1f + one command %.1f"
        " + terminate until terminated %.1f + security group after %.1f"
        % (
            floor["total"],
            floor["launch_until_ssh"],
            floor["one_command"],
            floor["terminate_until_terminated"],
            floor["security_group_after"],
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="time the smallest EC2 builder flow on the sandbox")
    parser.add_argument("--playbook", choices=sorted(FLOOR_BUILDERS), default="sd")
    parser.add_argument("--json", type=Path, help="also write the phases here")
    args = parser.parse_args(argv)
    with sandbox_up() as sandbox:
        floor = measure(sandbox, args.playbook)
    print_floor(floor)
    log("FLOOR " + json.dumps(floor))
    if args.json:
        args.json.write_text(json.dumps(floor, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""ec2_spot_host through ansible-playbook against the sandbox's EC2 (moto + real hosts).

Each test runs the module the way a user does (a play on localhost), then checks the
outcome from outside: SSH into the instance with the per-build key and the pinned host
key, and `sandboxctl resources --json` for what is (or is not) left of the build.
Needs root (the `sandbox` fixture brings up the instance from NIXFORGE_SANDBOX_INSTANCE).
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from nfsandbox.testing import play_module

pytestmark = pytest.mark.sandbox

MODULE = "nixforge.images.ec2_spot_host"
# A secret nobody else uses, so that finding it in the output means we leaked it.
SECRET_KEY = "nfSecret" + uuid.uuid4().hex


class Keys:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.dir = directory
        self.user_key = directory / "id_ed25519"
        self.host_key = directory / "ssh_host_ed25519_key"
        for path, comment in ((self.user_key, "build-login"), (self.host_key, "build-host")):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                check=True,
                capture_output=True,
            )
        self.user_pub = Path(str(self.user_key) + ".pub").read_text().strip()
        self.host_pub = Path(str(self.host_key) + ".pub").read_text().strip()
        self.host_private = self.host_key.read_text()

    @property
    def host_private_body(self) -> str:
        """A line from the middle of the private host key: must never show up in output."""
        lines = [line for line in self.host_private.splitlines() if "-----" not in line]
        return lines[len(lines) // 2]


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path / "keys")


@pytest.fixture
def build_id(ec2_sandbox, keys: Keys, tmp_path: Path):
    """A fresh build id; whatever the test leaves of it is removed (and the test fails)."""
    bid = "it-spot-" + uuid.uuid4().hex[:8]
    yield bid
    left = of_build(ec2_sandbox, bid)
    if left:
        Runner(ec2_sandbox, keys, tmp_path / "cleanup").run({"build_id": bid, "state": "absent"})
    assert left == [], "the test left resources of build %s behind: %s" % (bid, left)


def of_build(sandbox, bid: str) -> list[dict[str, Any]]:
    """Live resources of the build, from `sandboxctl resources --json`."""
    return [r for r in sandbox.resources() if bid in json.dumps(r)]


def ec2_resources(sandbox) -> list[dict[str, Any]]:
    return [r for r in sandbox.resources() if r.get("provider") in ("ec2", "sandbox")]


class Runner:
    """Runs the module in a play on localhost (`nfsandbox.testing.play_module`) and returns
    its registered result."""

    def __init__(self, sandbox, keys: Keys, directory: Path) -> None:
        self.sandbox = sandbox
        self.keys = keys
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.env = dict(sandbox.env())
        self.env.update(
            {
                "AWS_REGION": "us-east-1",
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_EC2_METADATA_DISABLED": "true",
                "AWS_CONFIG_FILE": str(self.dir / "no-aws-config"),
                "AWS_SHARED_CREDENTIALS_FILE": str(self.dir / "no-aws-credentials"),
            }
        )
        self.gateway = sandbox.instance.gateway  # the controller as the builders see it
        self.count = 0

    def present_args(self, bid: str, **extra: Any) -> dict[str, Any]:
        args = {
            "build_id": bid,
            "ttl": "1h",
            "ssh_cidr": ["%s/32" % self.gateway],
            "public_key": self.keys.user_pub,
            "host_key_private": self.keys.host_private,
            "host_key_public": self.keys.host_pub,
            "wait_timeout": 300,
        }
        args.update(extra)
        return args

    def run(
        self,
        args: dict[str, Any],
        check_mode: bool = False,
        verbosity: int = 0,
        env: dict[str, str] | None = None,
        drop_env: tuple[str, ...] = (),
    ) -> tuple[dict[str, Any], subprocess.CompletedProcess]:
        self.count += 1
        results, proc = play_module(
            MODULE,
            [args],
            self.dir / ("run-%d" % self.count),
            {**self.env, **(env or {})},
            check_mode=check_mode,
            verbosity=verbosity,
            unset_env=drop_env,
        )
        return results[0], proc


@pytest.fixture
def runner(ec2_sandbox, keys: Keys, tmp_path: Path) -> Runner:
    return Runner(ec2_sandbox, keys, tmp_path / "ansible")


def ssh(result: dict[str, Any], keys: Keys, known_hosts: Path, command: str) -> subprocess.CompletedProcess:
    known_hosts.write_text("%s %s\n" % (result["ssh_host"], " ".join(result["host_public_key"].split()[:2])))
    return subprocess.run(
        [
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            str(keys.user_key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "UserKnownHostsFile=%s" % known_hosts,
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
            "-p",
            str(result["ssh_port"]),
            "%s@%s" % (result["ssh_user"], result["ssh_host"]),
            command,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def assert_failed_naming(result: dict[str, Any], parameter: str) -> None:
    assert result.get("failed") is True, result
    assert "Parameter '%s' failed:" % parameter in result["msg"], result["msg"]
    assert "Traceback" not in json.dumps(result), result


# -- the life cycle ---------------------------------------------------------------------------


def test_present_ssh_adopt_absent(runner: Runner, keys: Keys, build_id: str, ec2_sandbox, tmp_path: Path):
    # check mode first: reports the creation, creates nothing
    result, _output = runner.run(runner.present_args(build_id), check_mode=True)
    assert result["changed"] is True and not result.get("failed"), result
    assert any(a.startswith("launch an instant fleet") for a in result["actions"])
    assert of_build(ec2_sandbox, build_id) == []

    # present, at -vvvv: the output is checked for secrets below
    result, proc = runner.run(runner.present_args(build_id), verbosity=4)
    assert not result.get("failed"), result.get("msg")
    assert result["changed"] is True and result["adopted"] is False
    assert result["lifecycle"] == "spot"
    assert result["instance_type"] in ("a1.2xlarge", "c6g.2xlarge", "c7g.2xlarge", "m7g.2xlarge")
    assert result["image_name"].startswith("debian-13-arm64-")
    assert result["ssh_user"] == "admin" and result["host_public_key"] == keys.host_pub
    assert result["build"]["build_id"] == build_id and result["build"]["expires_at"].endswith("Z")
    assert result["max_price"] and result["max_price_source"] == "table"
    output = proc.stdout + proc.stderr
    assert "<localhost> EXEC" in output or "ESTABLISH LOCAL CONNECTION" in output  # really -vvvv
    assert SECRET_KEY not in output
    assert keys.host_private_body not in output
    assert keys.host_private_body not in json.dumps(result)

    # SSH answers with the injected key, and the host key is the pinned one
    login = ssh(result, keys, tmp_path / "known_hosts", "id -un && systemctl is-active nixforge-expiry.timer")
    assert login.returncode == 0, login.stderr
    assert login.stdout.split() == ["admin", "active"]

    # every resource of the build carries the three tags
    live = of_build(ec2_sandbox, build_id)
    kinds = sorted(r["type"] for r in live if r.get("provider") == "ec2")
    assert kinds.count("instance") == 1, live
    for resource in live:
        if resource.get("provider") == "ec2" and "tags" in resource:
            assert resource["tags"]["nixforge-build-id"] == build_id, resource
            assert resource["tags"]["nixforge-pipeline"] == "default", resource
            assert resource["tags"]["nixforge-expires-at"] == result["build"]["expires_at"], resource

    volumes = [r for r in live if r["type"] == "volume"]
    assert [v.get("size") for v in volumes] == [16], volumes

    # the same build id again: adopted, nothing new
    again, _output = runner.run(runner.present_args(build_id, ttl="2h"))
    assert not again.get("failed"), again.get("msg")
    assert again["changed"] is False and again["adopted"] is True
    assert again["instance_id"] == result["instance_id"]
    assert again["build"]["expires_at"] == result["build"]["expires_at"]  # the instance's tag, not the new ttl
    assert [r["type"] for r in of_build(ec2_sandbox, build_id)].count("instance") == 1

    # absent in check mode: reports, removes nothing
    check, _output = runner.run({"build_id": build_id, "state": "absent"}, check_mode=True)
    assert check["changed"] is True and result["instance_id"] in check["removed"]["instances"]
    assert any(r.get("id") == result["instance_id"] for r in of_build(ec2_sandbox, build_id))

    # absent: everything goes; SSH stops answering
    gone, proc = runner.run({"build_id": build_id, "state": "absent"}, verbosity=4)
    assert not gone.get("failed"), gone.get("msg")
    assert gone["changed"] is True
    assert gone["removed"]["instances"] == [result["instance_id"]]
    assert gone["removed"]["key_pairs"] == ["nixforge-%s-ssh" % build_id]
    assert len(gone["removed"]["security_groups"]) == 1 and len(gone["removed"]["launch_templates"]) == 1
    assert SECRET_KEY not in proc.stdout + proc.stderr
    assert of_build(ec2_sandbox, build_id) == []

    # twice: a no-op
    twice, _output = runner.run({"build_id": build_id, "state": "absent"})
    assert twice["changed"] is False and not twice.get("failed")
    assert all(ids == [] for ids in twice["removed"].values())


def test_check_mode_and_real_run_report_the_same_actions(runner: Runner, build_id: str, ec2_sandbox):
    """The plan check mode reports is, text for text, what a real run then does."""
    for args in (runner.present_args(build_id), {"build_id": build_id, "state": "absent"}):
        check, _output = runner.run(args, check_mode=True)
        real, _output = runner.run(args)
        assert not check.get("failed") and not real.get("failed"), (check.get("msg"), real.get("msg"))
        assert check["changed"] is True and real["changed"] is True
        assert check["actions"] == real["actions"], (check["actions"], real["actions"])
        assert len(real["actions"]) >= 3  # key pair, security group, launch template / instance, fleet, ...
    assert of_build(ec2_sandbox, build_id) == []


# -- bad input fails before anything is created -------------------------------------------------


@pytest.mark.parametrize(
    ("case", "parameter"),
    [
        ("unknown_region", "region"),
        ("no_ami", "image_name"),
        ("no_debian_release_ami", "debian_release"),
        ("wrong_architecture", "instance_types"),
        ("unknown_instance_type", "instance_types"),
        ("missing_credentials", "access_key"),
        ("malformed_cidr", "ssh_cidr"),
        ("cidr_without_prefix", "ssh_cidr"),
        ("bad_build_id", "build_id"),
        ("no_host_key", "host_key_private"),
    ],
)
def test_bad_input_fails_early_naming_the_parameter(runner: Runner, build_id: str, ec2_sandbox, case, parameter):
    before = ec2_resources(ec2_sandbox)
    args = runner.present_args(build_id)
    env: dict[str, str] = {}
    drop: tuple[str, ...] = ()
    if case == "unknown_region":
        args["region"] = "us-middle-7"
    elif case == "no_ami":
        args["image_name"] = "debian-99-arm64-*"
    elif case == "no_debian_release_ami":
        args["image_owner"] = "111122223333"  # nobody publishes Debian there
    elif case == "wrong_architecture":
        args["instance_types"] = ["c7g.2xlarge", "c6i.2xlarge"]  # the second is x86_64 only
    elif case == "unknown_instance_type":
        args["instance_types"] = ["c7g.notatype"]
    elif case == "missing_credentials":
        drop = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")
    elif case == "malformed_cidr":
        args["ssh_cidr"] = ["10.213.0.1/33"]
    elif case == "cidr_without_prefix":
        args["ssh_cidr"] = [runner.gateway]
    elif case == "bad_build_id":
        args["build_id"] = "Not_Valid!"
    elif case == "no_host_key":
        del args["host_key_private"], args["host_key_public"]
    result, _output = runner.run(args, env=env, drop_env=drop)
    assert_failed_naming(result, parameter)
    assert of_build(ec2_sandbox, build_id) == []
    assert ec2_resources(ec2_sandbox) == before  # nothing created, nothing touched
    if case == "wrong_architecture":
        assert "c6i.2xlarge (x86_64)" in result["msg"]


# -- capacity -------------------------------------------------------------------------------


def test_no_capacity_anywhere_fails_clearly_and_leaves_nothing(runner: Runner, build_id: str, ec2_sandbox):
    ec2_sandbox.set_faults("ec2", {"capacity": [{"market": "spot"}]})
    result, _output = runner.run(runner.present_args(build_id, instance_types=["c7g.2xlarge", "a1.2xlarge"]))
    assert result.get("failed") is True, result
    assert result["msg"].startswith("Launching the builder failed: no capacity for any candidate:"), result["msg"]
    assert "on_demand_fallback" in result["msg"]
    assert "c7g.2xlarge" in result["msg"] and "a1.2xlarge" in result["msg"]
    assert "Everything this build had created was removed again" in result["msg"]
    assert {e["instance_type"] for e in result["candidate_errors"]} == {"c7g.2xlarge", "a1.2xlarge"}
    assert of_build(ec2_sandbox, build_id) == []


def test_capacity_error_on_first_candidate_moves_on(runner: Runner, keys: Keys, build_id: str, ec2_sandbox, tmp_path):
    ec2_sandbox.set_faults("ec2", {"capacity": [{"instance_type": "c7g.2xlarge", "market": "spot"}]})
    args = runner.present_args(
        build_id, instance_types=["c7g.2xlarge", "a1.2xlarge"], allocation_strategy="capacity-optimized-prioritized"
    )
    result, _output = runner.run(args)
    assert not result.get("failed"), result.get("msg")
    assert result["instance_type"] == "a1.2xlarge" and result["lifecycle"] == "spot"
    assert result["candidate_errors"], "the capacity error of the first candidate was not seen"
    assert {e["instance_type"] for e in result["candidate_errors"]} == {"c7g.2xlarge"}
    assert all(e["code"] == "InsufficientInstanceCapacity" for e in result["candidate_errors"])
    assert all(e["availability_zone"] and e["lifecycle"] == "spot" for e in result["candidate_errors"])
    assert ssh(result, keys, tmp_path / "known_hosts", "true").returncode == 0
    gone, _output = runner.run({"build_id": build_id, "state": "absent"})
    assert gone["changed"] is True and not gone.get("failed"), gone.get("msg")
    assert of_build(ec2_sandbox, build_id) == []


def test_on_demand_fallback(runner: Runner, build_id: str, ec2_sandbox):
    ec2_sandbox.set_faults("ec2", {"capacity": [{"market": "spot"}]})
    result, _output = runner.run(runner.present_args(build_id, instance_types=["a1.2xlarge"], on_demand_fallback=True))
    assert not result.get("failed"), result.get("msg")
    assert result["lifecycle"] == "on-demand" and result["spot_price"] is None
    assert result["candidate_errors"] and all(e["lifecycle"] == "spot" for e in result["candidate_errors"])
    gone, _output = runner.run({"build_id": build_id, "state": "absent"})
    assert not gone.get("failed"), gone.get("msg")
    assert of_build(ec2_sandbox, build_id) == []


# -- retries and detection ----------------------------------------------------------------


def test_throttling_and_5xx_are_retried(runner: Runner, build_id: str, ec2_sandbox):
    ec2_sandbox.set_faults(
        "ec2",
        {
            "throttle": {"count": 3, "actions": ["DescribeImages"]},
            "server_error": {"count": 2, "code": "Unavailable", "actions": ["DescribeInstanceTypes"]},
        },
    )
    result, _output = runner.run(runner.present_args(build_id), check_mode=True)
    assert not result.get("failed"), result.get("msg")
    assert result["changed"] is True and result["image_name"].startswith("debian-13-arm64-")
    # the faults were consumed by the module's calls: a client without retries now gets through
    import boto3
    from botocore.config import Config

    env = ec2_sandbox.env()
    client = boto3.client(
        "ec2",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        config=Config(retries={"total_max_attempts": 1}),
    )
    client.describe_images(Owners=["136693071363"], Filters=[{"Name": "name", "Values": ["debian-13-*"]}])
    client.describe_instance_types(InstanceTypes=["a1.2xlarge"])
    assert of_build(ec2_sandbox, build_id) == []


def test_faults_on_every_call_and_a_lost_create_fleet_answer(runner: Runner, build_id: str, ec2_sandbox):
    """A real launch and teardown while EC2 throttles and fails calls of every kind, and
    while the answer to CreateFleet is lost once: one instance, then nothing left."""
    ec2_sandbox.set_faults(
        "ec2",
        {
            "throttle": {"count": 4},
            "server_error": {"count": 3, "code": "Unavailable"},
            "lost_answer": {"count": 1, "actions": ["CreateFleet"]},
        },
    )
    result, _output = runner.run(runner.present_args(build_id))
    assert not result.get("failed"), result.get("msg")
    served = ec2_sandbox.call("GET", "/faults/ec2")["faults"]["served"]
    assert served["lost_answer"] == {"CreateFleet": 1}
    assert sum(served["throttle"].values()) == 4 and sum(served["server_error"].values()) == 3
    # the retried CreateFleet (same ClientToken) got the first fleet back: one instance
    instances = [r for r in of_build(ec2_sandbox, build_id) if r["type"] == "instance"]
    assert [i["id"] for i in instances] == [result["instance_id"]]

    ec2_sandbox.set_faults("ec2", {"throttle": {"count": 3}, "server_error": {"count": 2, "code": "InternalError"}})
    gone, _output = runner.run({"build_id": build_id, "state": "absent"})
    assert not gone.get("failed"), gone.get("msg")
    served = ec2_sandbox.call("GET", "/faults/ec2")["faults"]["served"]
    assert sum(served["throttle"].values()) == 3 and sum(served["server_error"].values()) == 2
    assert of_build(ec2_sandbox, build_id) == []


def test_ssh_cidr_auto_asks_the_lookup_url(runner: Runner, build_id: str, ec2_sandbox):
    import http.server
    import threading

    gateway = runner.gateway

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = (gateway + "\n").encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = "http://127.0.0.1:%d/" % server.server_address[1]
        result, _output = runner.run(
            runner.present_args(build_id, ssh_cidr=["auto"], ssh_cidr_lookup_url=url), check_mode=True
        )
        assert not result.get("failed"), result.get("msg")
        assert any("allowing SSH from %s/32" % gateway in a for a in result["actions"]), result["actions"]
        # an unreachable lookup fails naming ssh_cidr
        result, _output = runner.run(
            runner.present_args(build_id, ssh_cidr=["auto"], ssh_cidr_lookup_url="http://127.0.0.1:9/"),
            check_mode=True,
        )
        assert_failed_naming(result, "ssh_cidr")
    finally:
        server.shutdown()
    assert of_build(ec2_sandbox, build_id) == []


def test_existing_key_pair(runner: Runner, keys: Keys, build_id: str, ec2_sandbox):
    import boto3

    env = ec2_sandbox.env()
    client = boto3.client(
        "ec2",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )
    args = runner.present_args(build_id, key_name="users-own-" + build_id)
    del args["public_key"]
    result, _output = runner.run(args, check_mode=True)
    assert_failed_naming(result, "key_name")
    client.import_key_pair(KeyName="users-own-" + build_id, PublicKeyMaterial=keys.user_pub.encode())
    try:
        result, _output = runner.run(args, check_mode=True)
        assert not result.get("failed"), result.get("msg")
        assert result["key_name"] == "users-own-" + build_id
        assert not any(a.startswith("import key pair") for a in result["actions"])
    finally:
        client.delete_key_pair(KeyName="users-own-" + build_id)


# -- SSH ingress only from the controller ------------------------------------------------------


def tcp_open_from(netns: str, address: str, port: int = 22) -> bool:
    """Whether a TCP connection to address:port opens from inside the sandbox host ``netns``
    (the host's own network: its address, routes and the builder's security group)."""
    probe = (
        "import socket, sys\n"
        "s = socket.socket(); s.settimeout(5)\n"
        "try:\n    s.connect((sys.argv[1], int(sys.argv[2])))\nexcept OSError as e:\n    print(e); sys.exit(1)\n"
    )
    done = subprocess.run(
        ["ip", "netns", "exec", netns, "python3", "-c", probe, address, str(port)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode == 0


def test_ssh_ingress_only_from_the_controller(runner: Runner, keys: Keys, build_id: str, ec2_sandbox, tmp_path: Path):
    """The build's security group opens TCP 22 to the controller's /32 only (no other port, no
    other source, nothing over IPv6), and the sandbox enforces it: a second host on the same
    network cannot open port 22 on the builder while the controller logs in."""
    import boto3

    result, _proc = runner.run(runner.present_args(build_id))
    assert not result.get("failed"), result.get("msg")
    ec2 = boto3.client(
        "ec2",
        endpoint_url=runner.env["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    groups = ec2.describe_security_groups(Filters=[{"Name": "tag:nixforge-build-id", "Values": [build_id]}])
    [group] = groups["SecurityGroups"]
    assert [
        (p["IpProtocol"], p.get("FromPort"), p.get("ToPort"), [r["CidrIp"] for r in p.get("IpRanges", [])])
        for p in group["IpPermissions"]
    ] == [("tcp", 22, 22, ["%s/32" % runner.gateway])], group["IpPermissions"]
    for permission in group["IpPermissions"]:
        assert not permission.get("Ipv6Ranges"), permission  # nothing over IPv6
        assert not permission.get("UserIdGroupPairs") and not permission.get("PrefixListIds"), permission
    instance = ec2.describe_instances(InstanceIds=[result["instance_id"]])["Reservations"][0]["Instances"][0]
    assert [g["GroupId"] for g in instance["SecurityGroups"]] == [group["GroupId"]]

    # the controller logs in
    login = ssh(result, keys, tmp_path / "known_hosts", "true")
    assert login.returncode == 0, login.stderr
    # a second host of the sandbox cannot open TCP 22 on the builder ...
    other = ec2_sandbox.boot_host(owner=build_id + "-other")
    try:
        assert not tcp_open_from(other["name"], result["ssh_host"]), "the second host reached port 22"
        # ... because of the group alone: allowed in, the same probe opens the port
        ec2.authorize_security_group_ingress(
            GroupId=group["GroupId"], IpProtocol="tcp", FromPort=22, ToPort=22, CidrIp="%s/32" % other["ip"]
        )
        deadline = time.monotonic() + 120  # the sandbox applies rule changes within a second or so
        while not tcp_open_from(other["name"], result["ssh_host"]):
            assert time.monotonic() < deadline, "port 22 stayed closed to the second host after allowing it"
    finally:
        ec2_sandbox.stop_host(other["name"])
    gone, _proc = runner.run({"build_id": build_id, "state": "absent"})
    assert not gone.get("failed"), gone.get("msg")


def test_teardown_waits_out_a_security_group_still_in_use(runner: Runner, build_id: str, ec2_sandbox):
    """EC2 keeps a terminated instance's security group in use for a while
    (DependencyViolation); state absent retries until the group goes, and succeeds."""
    result, _proc = runner.run(runner.present_args(build_id))
    assert not result.get("failed"), result.get("msg")
    ec2_sandbox.set_faults("ec2", {"security_group_hold": {"seconds": 6}})
    gone, _proc = runner.run({"build_id": build_id, "state": "absent"})
    assert not gone.get("failed"), gone.get("msg")
    assert len(gone["removed"]["security_groups"]) == 1
    served = ec2_sandbox.call("GET", "/faults/ec2")["faults"]["served"]
    # the teardown asked again after being refused: its retry loop ran
    assert served.get("security_group_in_use", {}).get("DeleteSecurityGroup", 0) >= 1, served
    assert of_build(ec2_sandbox, build_id) == []

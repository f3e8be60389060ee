"""The sandbox's EC2 with real hosts: boto3 against the sandbox's moto, SSH into what it launched.

Needs root; the ``sandbox`` fixture (conftest.py) brings the instance named by
``NIXFORGE_SANDBOX_INSTANCE`` up. Every test ends by proving, with ``sandboxctl resources
--json``, that nothing leaked: no instance, fleet, template, key pair, volume or spot
request in EC2 and no host in use.
"""

from __future__ import annotations

import base64
import json
import shlex
import subprocess
import time

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

pytestmark = pytest.mark.sandbox

DEBIAN = "136693071363"
BUILD_TAG = {"Key": "nixforge-build-id", "Value": "it-sandbox-ec2"}
SSH_GROUP = "it-sandbox-ec2-ssh"


def api_resources(sandbox):
    return sandbox.call("GET", "/resources")["resources"]


def delete_group(client, group):
    """DeleteSecurityGroup as an EC2 client must: again while a terminated instance still holds
    the group (DependencyViolation; the sandbox holds it a while after the termination)."""
    deadline = time.monotonic() + 120
    while True:
        try:
            client.delete_security_group(GroupId=group)
            return
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "DependencyViolation" or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def leftovers(resources):
    return [r for r in resources if r["provider"] in ("ec2", "sandbox")]


@pytest.fixture
def ec2(sandbox):
    """A boto3 EC2 client for the sandbox; faults cleared around the test, leaks asserted after it."""
    if "ec2_endpoint" not in (sandbox.state().get("endpoints") or {}):
        pytest.fail("the sandbox runs without EC2: %s" % sandbox.state().get("providers"))
    assert leftovers(api_resources(sandbox)) == [], "the sandbox was not clean before the test"
    sandbox.set_faults("ec2", {})
    client = make_client(sandbox)
    # security groups are enforced: SSH only from the controller (the bridge's gateway)
    group = client.create_security_group(GroupName=SSH_GROUP, Description="SSH from the controller")["GroupId"]
    client.authorize_security_group_ingress(
        GroupId=group, IpProtocol="tcp", FromPort=22, ToPort=22, CidrIp="%s/32" % sandbox.instance.gateway
    )
    yield client
    sandbox.set_faults("ec2", {})
    running = [r["id"] for r in leftovers(api_resources(sandbox)) if r["type"] == "instance"]
    if running:
        client.terminate_instances(InstanceIds=running)
    delete_group(client, group)
    left = leftovers(sandbox.resources())  # what `sandboxctl resources --json` says
    if left:  # clean up for the next test, then fail this one
        ids = [r["id"] for r in left if r["type"] == "instance"]
        if ids:
            client.terminate_instances(InstanceIds=ids)
        sandbox.reset()
    assert left == [], "the test left resources behind"


def make_client(sandbox, **config):
    return boto3.client(
        "ec2",
        endpoint_url=sandbox.state()["endpoints"]["ec2_endpoint"],
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(**config) if config else None,
    )


@pytest.fixture
def keys(tmp_path):
    """A client key pair and a host key pair made here, as the controller does."""
    for name in ("client", "host"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(tmp_path / name)], check=True
        )
    return tmp_path


def user_data(keys, extra=""):
    host_private = "\n".join("    " + line for line in (keys / "host").read_text().splitlines())
    return (
        "#cloud-config\n"
        "ssh_authorized_keys:\n  - %s\n"
        "ssh_keys:\n  ed25519_private: |\n%s\n  ed25519_public: %s\n%s"
        % ((keys / "client.pub").read_text().strip(), host_private, (keys / "host.pub").read_text().strip(), extra)
    )


def ssh(keys, ip, command, known_host_key=None, key="client", timeout=20):
    known_hosts = keys / "known_hosts"
    host_key = known_host_key or " ".join((keys / "host.pub").read_text().split()[:2])
    known_hosts.write_text("%s %s\n" % (ip, host_key))
    return subprocess.run(
        [
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            str(keys / key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "UserKnownHostsFile=%s" % known_hosts,
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=5",
            "admin@%s" % ip,
            command,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def newest_ami(ec2, pattern="debian-12-amd64-*"):
    images = ec2.describe_images(Owners=[DEBIAN], Filters=[{"Name": "name", "Values": [pattern]}])["Images"]
    return max(images, key=lambda i: i["CreationDate"])["ImageId"]


def wait_for(ec2, instance_id, state, timeout=120):
    deadline = time.monotonic() + timeout
    while True:
        inst = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
        if inst["State"]["Name"] == state:
            return inst
        assert time.monotonic() < deadline, "%s stayed %s (waited for %s)" % (instance_id, inst["State"]["Name"], state)
        time.sleep(0.3)


def hosts_of(sandbox, instance_id):
    return [r for r in api_resources(sandbox) if r["type"] == "host" and r["owner"] == instance_id]


def ssh_group(ec2):
    return ec2.describe_security_groups(GroupNames=[SSH_GROUP])["SecurityGroups"][0]["GroupId"]


def launch(ec2, keys, **kwargs):
    params = {
        "ImageId": newest_ami(ec2),
        "InstanceType": "c5.metal",
        "MinCount": 1,
        "MaxCount": 1,
        "UserData": user_data(keys),
        "InstanceInitiatedShutdownBehavior": "terminate",
        "TagSpecifications": [{"ResourceType": "instance", "Tags": [BUILD_TAG]}],
        "SecurityGroupIds": [ssh_group(ec2)],
    }
    params.update(kwargs)
    return ec2.run_instances(**params)["Instances"][0]["InstanceId"]


def test_run_instances_gives_a_host_that_answers_ssh_with_the_user_data_key(sandbox, ec2, keys):
    iid = launch(ec2, keys, InstanceMarketOptions={"MarketType": "spot"})
    inst = wait_for(ec2, iid, "running")
    ip = inst["PublicIpAddress"]
    [host] = hosts_of(sandbox, iid)
    assert host["ip"] == ip
    assert inst["PrivateIpAddress"] != ip

    done = ssh(keys, ip, "cat /etc/nixforge-sandbox.json && sudo -n true && echo sudo-ok")
    assert done.returncode == 0, done.stderr
    assert '"owner": "%s"' % iid in done.stdout
    assert "sudo-ok" in done.stdout

    # the host key pinned is the one from the user data: another one is refused ...
    other = keys / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    refused = ssh(keys, ip, "true", known_host_key=" ".join(other.with_suffix(".pub").read_text().split()[:2]))
    assert refused.returncode != 0 and "HOST IDENTIFICATION HAS CHANGED" in refused.stderr
    # ... and so is a client key that was not in the user data
    denied = ssh(keys, ip, "true", key="other")
    assert denied.returncode != 0 and "Permission denied" in denied.stderr

    ec2.terminate_instances(InstanceIds=[iid])
    assert wait_for(ec2, iid, "terminated")
    assert hosts_of(sandbox, iid) == []
    assert ssh(keys, ip, "true", timeout=30).returncode != 0


def test_a_host_that_powers_itself_off_terminates_its_instance(sandbox, ec2, keys):
    iid = launch(ec2, keys, InstanceType="t3.micro")
    ip = wait_for(ec2, iid, "running")["PublicIpAddress"]
    # the connection may drop as the host goes down; the instance state is what counts
    ssh(keys, ip, "sudo -n systemctl poweroff")
    inst = wait_for(ec2, iid, "terminated", timeout=60)
    assert inst["StateReason"]["Code"] == "Client.InstanceInitiatedShutdown"
    assert hosts_of(sandbox, iid) == []


def test_an_injected_capacity_error_is_seen_by_boto3(sandbox, ec2, keys):
    sandbox.set_faults("ec2", {"capacity": [{"instance_type": "c5.metal", "availability_zone": "us-east-1a"}]})
    with pytest.raises(ClientError) as err:
        launch(ec2, keys, Placement={"AvailabilityZone": "us-east-1a"})
    assert err.value.response["Error"]["Code"] == "InsufficientInstanceCapacity"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert err.value.response["ResponseMetadata"]["RetryAttempts"] > 0  # retryable, as on EC2
    assert [r for r in leftovers(api_resources(sandbox)) if r["type"] in ("instance", "host")] == []


def test_throttling_is_a_retryable_error(sandbox, ec2):
    patient = make_client(sandbox, retries={"mode": "standard", "total_max_attempts": 5})
    sandbox.set_faults("ec2", {"throttle": {"count": 3, "actions": ["DescribeInstances"]}})
    reply = patient.describe_instances()
    assert reply["ResponseMetadata"]["RetryAttempts"] == 3
    impatient = make_client(sandbox, retries={"mode": "standard", "total_max_attempts": 1})
    sandbox.set_faults("ec2", {"throttle": {"count": 1}})
    with pytest.raises(ClientError) as err:
        impatient.describe_instances()
    assert err.value.response["Error"]["Code"] == "RequestLimitExceeded"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503


def test_an_instant_fleet_falls_back_to_the_next_override(sandbox, ec2, keys):
    template = ec2.create_launch_template(
        LaunchTemplateName="it-sandbox-ec2",
        LaunchTemplateData={
            "ImageId": newest_ami(ec2, "debian-12-arm64-*"),
            "UserData": base64.b64encode(user_data(keys).encode()).decode(),
            "InstanceInitiatedShutdownBehavior": "terminate",
            "TagSpecifications": [{"ResourceType": "instance", "Tags": [BUILD_TAG]}],
            "SecurityGroupIds": [ssh_group(ec2)],
        },
    )["LaunchTemplate"]["LaunchTemplateId"]
    sandbox.set_faults("ec2", {"capacity": [{"instance_type": "c6g.2xlarge", "market": "spot"}]})
    fleet = ec2.create_fleet(
        Type="instant",
        TargetCapacitySpecification={"TotalTargetCapacity": 1, "DefaultTargetCapacityType": "spot"},
        SpotOptions={"AllocationStrategy": "capacity-optimized-prioritized"},
        LaunchTemplateConfigs=[
            {
                "LaunchTemplateSpecification": {"LaunchTemplateId": template, "Version": "$Latest"},
                "Overrides": [
                    {"InstanceType": "c6g.2xlarge", "Priority": 1},
                    {"InstanceType": "c7g.2xlarge", "Priority": 2},
                ],
            }
        ],
    )
    [error] = fleet["Errors"]
    assert error["ErrorCode"] == "InsufficientInstanceCapacity"
    assert error["LaunchTemplateAndOverrides"]["Overrides"]["InstanceType"] == "c6g.2xlarge"
    [launched] = fleet["Instances"]
    assert launched["InstanceType"] == "c7g.2xlarge" and launched["Lifecycle"] == "spot"
    iid = launched["InstanceIds"][0]
    inst = wait_for(ec2, iid, "running")
    assert inst["PublicIpAddress"], "fleet instances get a public address"
    done = ssh(keys, inst["PublicIpAddress"], "cat /etc/nixforge-sandbox.json")
    assert done.returncode == 0, done.stderr
    assert iid in done.stdout

    ec2.delete_fleets(FleetIds=[fleet["FleetId"]], TerminateInstances=True)
    wait_for(ec2, iid, "terminated")
    ec2.delete_launch_template(LaunchTemplateId=template)
    assert hosts_of(sandbox, iid) == []


# -- failure knobs: an answer lost on the way back, a spot interruption ---------------


def test_a_lost_answer_is_applied_but_never_heard_of(sandbox, ec2, keys):
    impatient = make_client(sandbox, retries={"mode": "standard", "total_max_attempts": 1})
    sandbox.set_faults("ec2", {"lost_answer": {"count": 1, "actions": ["RunInstances"]}})
    with pytest.raises(ClientError) as err:
        launch(impatient, keys, InstanceType="t3.micro")
    assert err.value.response["Error"]["Code"] == "InternalError"
    served = sandbox.call("GET", "/faults/ec2")["faults"]["served"]
    assert served == {"lost_answer": {"RunInstances": 1}}
    # ... yet the instance exists: only a client token or adoption by tags avoids a second one
    found = ec2.describe_instances(
        Filters=[
            {"Name": "tag:nixforge-build-id", "Values": [BUILD_TAG["Value"]]},
            {"Name": "instance-state-name", "Values": ["pending", "running"]},
        ]
    )
    [iid] = [i["InstanceId"] for r in found["Reservations"] for i in r["Instances"]]
    wait_for(ec2, iid, "running")  # a host still booting would outlive the fixture's leak check
    ec2.terminate_instances(InstanceIds=[iid])
    wait_for(ec2, iid, "terminated")


# Run on the host: its instance id and spot/instance-action (or "none"), asked with an IMDSv2 token.
IMDS_SPOT_ACTION = """
import urllib.error, urllib.request as u
base = "http://169.254.169.254/latest/"
put = u.Request(base + "api/token", method="PUT", headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
token = u.urlopen(put, timeout=5).read().decode()
def get(path):
    return u.urlopen(u.Request(base + path, headers={"X-aws-ec2-metadata-token": token}), timeout=5).read().decode()
print(get("meta-data/instance-id"))
try:
    print(get("meta-data/spot/instance-action"))
except urllib.error.HTTPError as e:
    print("none", e.code)
"""


def test_a_spot_interruption_terminates_the_instance_and_stops_its_host(sandbox, ec2, keys):
    """As on EC2: first the notice (instance metadata spot/instance-action, read from the host
    itself with an IMDSv2 token, and an EventBridge-style warning), then the termination."""
    iid = launch(ec2, keys, InstanceType="t3.micro", InstanceMarketOptions={"MarketType": "spot"})
    ip = wait_for(ec2, iid, "running")["PublicIpAddress"]
    before = ssh(keys, ip, "python3 -c %s" % shlex.quote(IMDS_SPOT_ACTION))
    assert before.returncode == 0 and before.stdout.split()[:2] == [iid, "none"], (before.stdout, before.stderr)
    notice = 8
    sandbox.set_faults(
        "ec2", {"spot_interruption": {"build_id": BUILD_TAG["Value"], "after_seconds": 1, "notice_seconds": notice}}
    )
    deadline = time.monotonic() + 60
    while "spot_interruption_notice" not in sandbox.call("GET", "/faults/ec2")["faults"]["served"]:
        assert time.monotonic() < deadline, "no interruption notice"
        time.sleep(0.2)
    noticed = ssh(keys, ip, "python3 -c %s" % shlex.quote(IMDS_SPOT_ACTION))
    lines = noticed.stdout.splitlines()
    assert noticed.returncode == 0 and lines[0] == iid, (noticed.stdout, noticed.stderr)
    action = json.loads(lines[1])
    assert action["action"] == "terminate" and action["time"].endswith("Z"), action
    events = sandbox.call("GET", "/faults/ec2")["faults"]["events"]
    assert [(e["detail-type"], e["detail"]["instance-id"]) for e in events] == [
        ("EC2 Spot Instance Interruption Warning", iid)
    ]
    inst = wait_for(ec2, iid, "terminated", timeout=60 + notice)
    assert inst["StateReason"]["Code"] == "Server.SpotInstanceTermination"
    deadline = time.monotonic() + 30  # the host goes down while the instance shows terminated
    while hosts_of(sandbox, iid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert hosts_of(sandbox, iid) == []
    assert sandbox.call("GET", "/faults/ec2")["faults"]["served"] == {
        "spot_interruption_notice": {iid: 1},
        "spot_interruption": {iid: 1},
    }


# -- security groups and key pairs, as EC2 applies them --------------------------------


def test_security_groups_are_enforced_and_follow_rule_changes(sandbox, ec2, keys):
    closed = ec2.create_security_group(GroupName="it-closed", Description="SSH from elsewhere only")["GroupId"]
    try:
        ec2.authorize_security_group_ingress(
            GroupId=closed, IpProtocol="tcp", FromPort=22, ToPort=22, CidrIp="192.0.2.7/32"
        )
        iid = launch(ec2, keys, InstanceType="t3.micro", SecurityGroupIds=[closed])
        ip = wait_for(ec2, iid, "running")["PublicIpAddress"]
        refused = ssh(keys, ip, "true", timeout=30)
        assert refused.returncode != 0 and "timed out" in refused.stderr, refused.stderr
        # opening the group to the controller lets SSH in, as on EC2
        ec2.authorize_security_group_ingress(
            GroupId=closed, IpProtocol="tcp", FromPort=22, ToPort=22, CidrIp="%s/32" % sandbox.instance.gateway
        )
        deadline = time.monotonic() + 20
        while ssh(keys, ip, "true", timeout=10).returncode != 0:
            assert time.monotonic() < deadline, "SSH stayed closed after the ingress rule was added"
            time.sleep(1)
        ec2.terminate_instances(InstanceIds=[iid])
        wait_for(ec2, iid, "terminated")
    finally:
        delete_group(ec2, closed)


def test_a_key_pair_named_at_launch_logs_in_the_default_user(sandbox, ec2, keys):
    ec2.import_key_pair(KeyName="it-keypair", PublicKeyMaterial=(keys / "client.pub").read_bytes())
    try:
        host_only = user_data(keys).replace(
            "ssh_authorized_keys:\n  - %s\n" % (keys / "client.pub").read_text().strip(), ""
        )
        assert "ssh_authorized_keys" not in host_only
        iid = launch(ec2, keys, InstanceType="t3.micro", KeyName="it-keypair", UserData=host_only)
        ip = wait_for(ec2, iid, "running")["PublicIpAddress"]
        done = ssh(keys, ip, "id -un")
        assert done.returncode == 0 and done.stdout.strip() == "admin", done.stderr
        ec2.terminate_instances(InstanceIds=[iid])
        wait_for(ec2, iid, "terminated")
    finally:
        ec2.delete_key_pair(KeyName="it-keypair")


def test_termination_goes_through_shutting_down_and_holds_the_security_group(sandbox, ec2, keys):
    group = ec2.create_security_group(GroupName="it-held", Description="held by a terminating instance")["GroupId"]
    iid = launch(ec2, keys, InstanceType="t3.micro", SecurityGroupIds=[group])
    wait_for(ec2, iid, "running")
    reply = ec2.terminate_instances(InstanceIds=[iid])["TerminatingInstances"][0]
    assert reply["CurrentState"]["Name"] == "shutting-down"
    with pytest.raises(ClientError) as err:
        ec2.delete_security_group(GroupId=group)  # shutting-down: still in use
    assert err.value.response["Error"]["Code"] == "DependencyViolation"
    inst = wait_for(ec2, iid, "terminated", timeout=30)
    assert inst["StateReason"]["Code"] == "Client.UserInitiatedShutdown"
    delete_group(ec2, group)  # terminated: held a while longer, then deleted


def test_create_fleet_honours_client_tokens(sandbox, ec2, keys):
    template = ec2.create_launch_template(
        LaunchTemplateName="it-token",
        LaunchTemplateData={
            "ImageId": newest_ami(ec2),
            "UserData": base64.b64encode(user_data(keys).encode()).decode(),
            "InstanceInitiatedShutdownBehavior": "terminate",
            "TagSpecifications": [{"ResourceType": "instance", "Tags": [BUILD_TAG]}],
            "SecurityGroupIds": [ssh_group(ec2)],
        },
    )["LaunchTemplate"]["LaunchTemplateId"]
    request = {
        "Type": "instant",
        "ClientToken": "it-token-1",
        "TargetCapacitySpecification": {"TotalTargetCapacity": 1, "DefaultTargetCapacityType": "on-demand"},
        "LaunchTemplateConfigs": [
            {
                "LaunchTemplateSpecification": {"LaunchTemplateId": template, "Version": "$Latest"},
                "Overrides": [{"InstanceType": "t3.micro"}],
            }
        ],
    }
    first = ec2.create_fleet(**request)
    again = ec2.create_fleet(**request)  # a retry after a lost answer
    assert again["FleetId"] == first["FleetId"]
    ids = [i for entry in first["Instances"] for i in entry["InstanceIds"]]
    assert len(ids) == 1
    wait_for(ec2, ids[0], "running")
    ec2.delete_fleets(FleetIds=[first["FleetId"]], TerminateInstances=True)
    wait_for(ec2, ids[0], "terminated", timeout=30)
    ec2.delete_launch_template(LaunchTemplateId=template)

"""The sandbox's EC2 provider against a fake host pool: moto on loopback, real boto3 calls.

No root and no namespaces needed: the pool only records what it was asked to do. The real
hosts are exercised by tests/integration/test_sandbox_ec2.py.
"""

from __future__ import annotations

import base64
import calendar
import sys
import threading
import time
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "sandbox"))

from nfsandbox import ec2
from nfsandbox.ec2 import catalog as ec2_catalog
from nfsandbox.ec2 import patches as ec2_moto
from nfsandbox.ec2.faults import FaultError
from nfsandbox.testing import HANG_GUARD

DEBIAN = ec2_catalog.DEBIAN_OWNER


class FakeHost:
    def __init__(self, n, owner, userdata, arch, suite, on_poweroff):
        self.name = "fake-%d" % n
        self.ip = "10.213.250.%d" % (10 + n)
        self.owner = owner
        self.userdata = userdata
        self.arch = arch
        self.suite = suite
        self.on_poweroff = on_poweroff
        self.state = "running"
        self.host_public_keys = {}


class FakePool:
    def __init__(self):
        self.lock = threading.Lock()
        self.booted = []
        self.stopped = []
        self.fail = None
        self.delay = 0.05
        self.stop_delay = 0.0
        self.gate: threading.Event | None = None  # set: boots finish (a boot waits for it)

    def boot(self, owner, userdata, default_user="admin", on_poweroff=None, arch="x86_64", suite="bookworm"):
        assert default_user == "admin"
        time.sleep(self.delay)
        if self.gate is not None:
            assert self.gate.wait(HANG_GUARD)
        if self.fail:
            raise RuntimeError(self.fail)
        with self.lock:
            host = FakeHost(len(self.booted), owner, userdata, arch, suite, on_poweroff)
            self.booted.append(host)
        return host

    def stop(self, host):
        time.sleep(self.stop_delay)
        with self.lock:
            host.state = "terminated"
            self.stopped.append(host)

    def hosts(self):
        with self.lock:
            return [h for h in self.booted if h.state == "running"]

    def power_off(self, host):
        """What the real pool does when the host shuts itself down."""
        host.state = "powered-off"
        host.on_poweroff()


class FakeSandbox:
    def __init__(self):
        self.pool = FakePool()
        self.config = None


@pytest.fixture(scope="module")
def sandbox():
    sb = FakeSandbox()
    provider = ec2.Provider(sb)
    endpoints = provider.start()
    sb.provider = provider
    sb.endpoint = endpoints["ec2_endpoint"]
    yield sb
    provider.stop()


@pytest.fixture
def cloud(sandbox):
    sandbox.provider.reset()
    sandbox.pool.fail = None
    yield sandbox
    sandbox.provider.set_faults({})


def client(sb, **config):
    return boto3.client(
        "ec2",
        endpoint_url=sb.endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(**config) if config else None,
    )


def newest(ec2c, pattern, arch):
    images = ec2c.describe_images(
        Owners=[DEBIAN],
        Filters=[{"Name": "name", "Values": [pattern]}, {"Name": "architecture", "Values": [arch]}],
    )["Images"]
    return max(images, key=lambda i: i["CreationDate"])


def wait_state(ec2c, iid, state, timeout=HANG_GUARD):
    deadline = time.monotonic() + timeout
    while True:
        inst = ec2c.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
        if inst["State"]["Name"] == state:
            return inst
        assert time.monotonic() < deadline, "instance %s is %s, not %s" % (iid, inst["State"]["Name"], state)
        time.sleep(0.05)


def test_catalogue_has_debian_10_12_13_for_both_arches(cloud):
    ec2c = client(cloud)
    images = ec2c.describe_images(Owners=[DEBIAN])["Images"]
    names = {i["Name"] for i in images}
    for major in (10, 12, 13):
        for arch in ("amd64", "arm64"):
            assert sum(n.startswith("debian-%d-%s-" % (major, arch)) for n in names) >= 3
    img = newest(ec2c, "debian-12-arm64-*", "arm64")
    assert img["Name"] == "debian-12-arm64-20260915-2555"
    assert img["RootDeviceName"] == "/dev/xvda"
    assert img["VirtualizationType"] == "hvm"
    assert img["EnaSupport"] is True
    assert img["OwnerId"] == DEBIAN
    assert "OwnerAlias" not in img
    # the backports images exist, so a loose pattern is a real mistake here too
    loose = ec2c.describe_images(Owners=[DEBIAN], Filters=[{"Name": "name", "Values": ["debian-12-*"]}])["Images"]
    assert any("backports" in i["Name"] for i in loose)
    assert ec2c.describe_images(Owners=["amazon"])["Images"] == []


def test_run_instances_boots_a_host_with_the_user_data(cloud):
    ec2c = client(cloud)
    ami = newest(ec2c, "debian-13-amd64-*", "x86_64")["ImageId"]
    user_data = "#cloud-config\nssh_authorized_keys: [ssh-ed25519 AAAAtest]\n"
    res = ec2c.run_instances(
        ImageId=ami,
        InstanceType="c5.metal",
        MinCount=1,
        MaxCount=1,
        UserData=user_data,
        InstanceInitiatedShutdownBehavior="terminate",
        InstanceMarketOptions={"MarketType": "spot", "SpotOptions": {"SpotInstanceType": "one-time"}},
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "nixforge-build-id", "Value": "b1"}]}],
    )
    inst = res["Instances"][0]
    assert inst["State"]["Name"] == "pending"
    assert "PublicIpAddress" not in inst
    running = wait_state(ec2c, inst["InstanceId"], "running")
    host = cloud.pool.booted[-1]
    assert host.owner == inst["InstanceId"]
    assert host.userdata == user_data
    assert host.suite == "trixie" and host.arch == "x86_64"
    assert running["PublicIpAddress"] == host.ip
    assert running["PublicDnsName"] == "ec2-%s.compute-1.amazonaws.com" % host.ip.replace(".", "-")
    assert running["PrivateIpAddress"] != host.ip
    assert running["InstanceLifecycle"] == "spot"
    [res_item] = [r for r in cloud.provider.resources() if r["type"] == "instance"]
    assert res_item["id"] == inst["InstanceId"] and res_item["tags"] == {"nixforge-build-id": "b1"}
    assert res_item["host"] == host.name

    # a one-time spot instance cannot be stopped
    with pytest.raises(ClientError) as err:
        ec2c.stop_instances(InstanceIds=[inst["InstanceId"]])
    assert err.value.response["Error"]["Code"] == "UnsupportedOperation"

    ec2c.terminate_instances(InstanceIds=[inst["InstanceId"]])
    assert host in cloud.pool.stopped
    assert [r for r in cloud.provider.resources() if r["type"] == "instance"] == []


def test_waiter_works(cloud):
    ec2c = client(cloud)
    ami = newest(ec2c, "debian-12-amd64-*", "x86_64")["ImageId"]
    iid = ec2c.run_instances(ImageId=ami, InstanceType="t3.micro", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    ec2c.get_waiter("instance_running").wait(InstanceIds=[iid], WaiterConfig={"Delay": 1, "MaxAttempts": 10})
    ec2c.terminate_instances(InstanceIds=[iid])
    ec2c.get_waiter("instance_terminated").wait(InstanceIds=[iid], WaiterConfig={"Delay": 1, "MaxAttempts": 5})


def test_terminate_while_booting_stops_the_host_when_it_comes_up(cloud):
    ec2c = client(cloud)
    cloud.pool.gate = threading.Event()  # the host comes up only when the test says so
    try:
        ami = newest(ec2c, "debian-12-amd64-*", "x86_64")["ImageId"]
        iid = ec2c.run_instances(ImageId=ami, InstanceType="t3.micro", MinCount=1, MaxCount=1)["Instances"][0][
            "InstanceId"
        ]
        ec2c.terminate_instances(InstanceIds=[iid])
        assert not [h for h in cloud.pool.booted if h.owner == iid]  # still booting
        cloud.pool.gate.set()
        deadline = time.monotonic() + HANG_GUARD
        while not [h for h in cloud.pool.stopped if h.owner == iid]:
            assert time.monotonic() < deadline, "host of a terminated pending instance kept running"
            time.sleep(0.05)
        assert wait_state(ec2c, iid, "terminated")
    finally:
        cloud.pool.gate.set()
        cloud.pool.gate = None


@pytest.mark.parametrize("shutdown_seconds", [0.0, 0.2])
def test_a_terminated_instance_has_no_running_host(cloud, shutdown_seconds):
    # stopping the host takes longer than shutting-down: terminated must still mean "off"
    ec2c = client(cloud)
    cloud.pool.stop_delay = 0.6
    cloud.provider.shutdown_seconds = shutdown_seconds
    try:
        ami = newest(ec2c, "debian-12-amd64-*", "x86_64")["ImageId"]
        iid = ec2c.run_instances(ImageId=ami, InstanceType="t3.micro", MinCount=1, MaxCount=1)["Instances"][0][
            "InstanceId"
        ]
        assert wait_state(ec2c, iid, "running")
        watcher = threading.Thread(target=ec2c.terminate_instances, kwargs={"InstanceIds": [iid]})
        watcher.start()
        deadline = time.monotonic() + HANG_GUARD
        while True:
            state = ec2c.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["State"]["Name"]
            if state == "terminated":
                assert [h for h in cloud.pool.stopped if h.owner == iid], "terminated while its host still ran"
                break
            assert time.monotonic() < deadline, state
            time.sleep(0.02)
        watcher.join()
    finally:
        cloud.pool.stop_delay = 0.0
        cloud.provider.shutdown_seconds = 0.0


@pytest.mark.parametrize(("behaviour", "final"), [("terminate", "terminated"), ("stop", "stopped")])
def test_poweroff_inside_the_host_applies_the_shutdown_behaviour(cloud, behaviour, final):
    ec2c = client(cloud)
    ami = newest(ec2c, "debian-12-arm64-*", "arm64")["ImageId"]
    iid = ec2c.run_instances(
        ImageId=ami,
        InstanceType="c7g.2xlarge",
        MinCount=1,
        MaxCount=1,
        InstanceInitiatedShutdownBehavior=behaviour,
    )["Instances"][0]["InstanceId"]
    wait_state(ec2c, iid, "running")
    host = cloud.pool.booted[-1]
    assert host.arch == "arm64" and host.suite == "bookworm"
    cloud.pool.power_off(host)
    inst = wait_state(ec2c, iid, final)
    assert inst["StateReason"]["Code"] == "Client.InstanceInitiatedShutdown"
    assert "PublicIpAddress" not in inst
    if final == "stopped":
        # starting it again boots a fresh host
        ec2c.start_instances(InstanceIds=[iid])
        inst = wait_state(ec2c, iid, "running")
        assert inst["PublicIpAddress"] == cloud.pool.booted[-1].ip != host.ip
        ec2c.stop_instances(InstanceIds=[iid])
        assert cloud.pool.booted[-1] in cloud.pool.stopped
        ec2c.terminate_instances(InstanceIds=[iid])


def test_host_that_cannot_boot_terminates_the_instance(cloud):
    ec2c = client(cloud)
    cloud.pool.fail = "no Debian 10 hosts in the sandbox"
    ami = newest(ec2c, "debian-10-amd64-*", "x86_64")["ImageId"]
    iid = ec2c.run_instances(ImageId=ami, InstanceType="t3.micro", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    inst = wait_state(ec2c, iid, "terminated")
    assert inst["StateReason"]["Code"] == "Server.InternalError"


def test_bad_input_is_rejected_as_aws_does(cloud):
    ec2c = client(cloud)
    arm = newest(ec2c, "debian-12-arm64-*", "arm64")["ImageId"]
    cases = [
        ({"ImageId": arm, "InstanceType": "c5.metal"}, "InvalidParameterValue", "architecture"),
        ({"ImageId": arm, "InstanceType": "c7g.2xlarge-nope"}, "InvalidParameterValue", "for InstanceType"),
        ({"ImageId": "ami-0123456789abcdef0", "InstanceType": "c7g.2xlarge"}, "InvalidAMIID.NotFound", ""),
        (
            {"ImageId": arm, "InstanceType": "a1.2xlarge", "Placement": {"AvailabilityZone": "us-east-1d"}},
            "Unsupported",
            "us-east-1a, us-east-1b, us-east-1c",
        ),
        ({"ImageId": arm, "InstanceType": "c7g.2xlarge", "KeyName": "missing"}, "InvalidKeyPair.NotFound", ""),
        (
            {
                "ImageId": arm,
                "InstanceType": "c7g.2xlarge",
                "InstanceMarketOptions": {"MarketType": "spot", "SpotOptions": {"MaxPrice": "0.001"}},
            },
            "SpotMaxPriceTooLow",
            "0.001",
        ),
    ]
    for kwargs, code, text in cases:
        with pytest.raises(ClientError) as err:
            ec2c.run_instances(MinCount=1, MaxCount=1, **kwargs)
        assert err.value.response["Error"]["Code"] == code, kwargs
        assert text in err.value.response["Error"]["Message"]
    assert cloud.pool.booted == [] or all(h.state != "running" for h in cloud.pool.booted)
    assert [r for r in cloud.provider.resources() if r["type"] == "instance"] == []


def test_capacity_fault_on_run_instances(cloud):
    ec2c = client(cloud, retries={"mode": "standard", "total_max_attempts": 3})
    ami = newest(ec2c, "debian-12-arm64-*", "arm64")["ImageId"]
    cloud.provider.set_faults({"capacity": [{"instance_type": "c7g.*", "availability_zone": "us-east-1a"}]})
    with pytest.raises(ClientError) as err:
        ec2c.run_instances(
            ImageId=ami,
            InstanceType="c7g.2xlarge",
            MinCount=1,
            MaxCount=1,
            Placement={"AvailabilityZone": "us-east-1a"},
        )
    error = err.value.response
    assert error["Error"]["Code"] == "InsufficientInstanceCapacity"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert error["ResponseMetadata"]["RetryAttempts"] == 2  # EC2 sends a 5xx: SDKs retry it
    assert "us-east-1b" in error["Error"]["Message"]
    # without a zone EC2 places the instance where there is capacity
    inst = ec2c.run_instances(ImageId=ami, InstanceType="c7g.2xlarge", MinCount=1, MaxCount=1)["Instances"][0]
    assert inst["Placement"]["AvailabilityZone"] == "us-east-1b"
    # a fault without zone: nowhere; spot wording differs
    cloud.provider.set_faults({"capacity": [{"instance_type": "m7g.2xlarge", "market": "spot", "count": 3}]})
    with pytest.raises(ClientError) as err:
        ec2c.run_instances(
            ImageId=ami,
            InstanceType="m7g.2xlarge",
            MinCount=1,
            MaxCount=1,
            InstanceMarketOptions={"MarketType": "spot"},
        )
    assert err.value.response["Error"]["Message"] == "There is no Spot capacity available that matches your request."
    # count 3: all three attempts failed; the fault is used up now
    assert cloud.provider.get_faults()["capacity"][0]["count"] == 0
    ec2c.run_instances(
        ImageId=ami, InstanceType="m7g.2xlarge", MinCount=1, MaxCount=1, InstanceMarketOptions={"MarketType": "spot"}
    )


def test_throttling_and_server_errors_are_retryable(cloud):
    ec2c = client(cloud, retries={"mode": "standard", "total_max_attempts": 4})
    cloud.provider.set_faults({"throttle": {"count": 2, "actions": ["DescribeImages"]}})
    reply = ec2c.describe_images(Owners=[DEBIAN])
    assert reply["ResponseMetadata"]["RetryAttempts"] == 2
    ec2c.describe_instances()  # other actions unaffected
    once = client(cloud, retries={"mode": "standard", "total_max_attempts": 1})
    cloud.provider.set_faults({"throttle": {"count": 1}})
    with pytest.raises(ClientError) as err:
        once.describe_instances()
    assert err.value.response["Error"]["Code"] == "RequestLimitExceeded"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    cloud.provider.set_faults({"throttle": {"count": 1, "code": "Throttling"}})
    with pytest.raises(ClientError) as err:
        once.describe_instances()
    assert err.value.response["Error"]["Code"] == "Throttling"
    cloud.provider.set_faults({"server_error": {"count": 1}})
    with pytest.raises(ClientError) as err:
        once.describe_instances()
    assert err.value.response["Error"]["Code"] == "InternalError"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    cloud.provider.set_faults({"server_error": {"count": 3, "code": "Unavailable"}})
    assert ec2c.describe_instances()["ResponseMetadata"]["RetryAttempts"] == 3
    cloud.provider.set_faults({"delay": {"seconds": 0.3, "count": 1}})
    started = time.monotonic()
    ec2c.describe_instances()
    assert time.monotonic() - started >= 0.3


def test_fault_documents_are_checked(cloud):
    for bad, text in [
        ({"capacity": {"instance_type": "x"}}, "list"),
        ({"capacity": [{"type": "x"}]}, "unknown key"),
        ({"throttel": {"count": 1}}, "unknown EC2 fault kind"),
        ({"throttle": {}}, "count is required"),
        ({"throttle": {"count": 1, "code": "SlowDown"}}, "throttle.code"),
        ({"server_error": {"count": 1, "status": 404}}, "5xx"),
        ({"delay": {"seconds": "1"}}, "delay.seconds"),
        ({"capacity": [{"market": "reserved"}]}, "market"),
    ]:
        with pytest.raises(FaultError, match=text):
            cloud.provider.set_faults(bad)


def _template(ec2c, ami, name="nf-builder", **data):
    return ec2c.create_launch_template(
        LaunchTemplateName=name,
        LaunchTemplateData=dict(
            {
                "ImageId": ami,
                "UserData": base64.b64encode(b"#cloud-config\n{}\n").decode(),
                "InstanceInitiatedShutdownBehavior": "terminate",
                "TagSpecifications": [
                    {"ResourceType": "instance", "Tags": [{"Key": "nixforge-build-id", "Value": "f"}]}
                ],
            },
            **data,
        ),
    )["LaunchTemplate"]["LaunchTemplateId"]


def _fleet(ec2c, lt, overrides, capacity_type="spot", strategy=None):
    kwargs = {
        "Type": "instant",
        "TargetCapacitySpecification": {"TotalTargetCapacity": 1, "DefaultTargetCapacityType": capacity_type},
        "LaunchTemplateConfigs": [
            {"LaunchTemplateSpecification": {"LaunchTemplateId": lt, "Version": "$Latest"}, "Overrides": overrides}
        ],
    }
    if strategy:
        key = "SpotOptions" if capacity_type == "spot" else "OnDemandOptions"
        kwargs[key] = {"AllocationStrategy": strategy}
    return ec2c.create_fleet(**kwargs)


def test_instant_fleet_skips_a_candidate_without_capacity(cloud):
    ec2c = client(cloud)
    ami = newest(ec2c, "debian-12-arm64-*", "arm64")["ImageId"]
    lt = _template(ec2c, ami)
    cloud.provider.set_faults({"capacity": [{"instance_type": "c6g.2xlarge"}]})
    overrides = [
        {"InstanceType": "c6g.2xlarge", "Priority": 1},
        {"InstanceType": "c7g.2xlarge", "Priority": 2},
        {"InstanceType": "a1.2xlarge", "Priority": 3},
    ]
    reply = _fleet(ec2c, lt, overrides, strategy="capacity-optimized-prioritized")
    assert [i["InstanceType"] for i in reply["Instances"]] == ["c7g.2xlarge"]
    assert reply["Instances"][0]["Lifecycle"] == "spot"
    [error] = reply["Errors"]
    assert error["ErrorCode"] == "InsufficientInstanceCapacity"
    assert error["Lifecycle"] == "spot"
    assert error["LaunchTemplateAndOverrides"]["Overrides"]["InstanceType"] == "c6g.2xlarge"
    assert error["LaunchTemplateAndOverrides"]["LaunchTemplateSpecification"]["LaunchTemplateId"] == lt
    iid = reply["Instances"][0]["InstanceIds"][0]
    inst = wait_state(ec2c, iid, "running")
    assert inst["PublicIpAddress"] == cloud.pool.booted[-1].ip
    assert cloud.pool.booted[-1].userdata == "#cloud-config\n{}\n"
    tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
    assert tags["nixforge-build-id"] == "f" and tags["aws:ec2:fleet-id"] == reply["FleetId"]
    described = ec2c.describe_fleets(FleetIds=[reply["FleetId"]])["Fleets"][0]
    assert described["Errors"][0]["ErrorCode"] == "InsufficientInstanceCapacity"
    # the template's shutdown behaviour reached the instance
    attr = ec2c.describe_instance_attribute(InstanceId=iid, Attribute="instanceInitiatedShutdownBehavior")
    assert attr["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"
    ec2c.delete_fleets(FleetIds=[reply["FleetId"]], TerminateInstances=True)
    wait_state(ec2c, iid, "terminated")
    assert cloud.pool.booted[-1] in cloud.pool.stopped
    # a fleet whose instances are gone already is deleted too, as on EC2
    gone = _fleet(ec2c, lt, overrides[1:], strategy="capacity-optimized-prioritized")
    ec2c.terminate_instances(InstanceIds=gone["Instances"][0]["InstanceIds"])
    deleted = ec2c.delete_fleets(FleetIds=[gone["FleetId"]], TerminateInstances=True)
    assert deleted["SuccessfulFleetDeletions"] == [
        {"FleetId": gone["FleetId"], "CurrentFleetState": "deleted_terminating", "PreviousFleetState": "active"}
    ]
    assert deleted["UnsuccessfulFleetDeletions"] == []
    # strict as EC2 documents DeleteFleets: a deleted fleet is not deleted again, unknown
    # and malformed ids are reported per fleet, and an instant fleet never goes without its
    # instances (nothing is deleted then)
    again = ec2c.delete_fleets(
        FleetIds=[gone["FleetId"], "fleet-0123abcd-0123-4567-89ab-0123456789ab", "nope"], TerminateInstances=True
    )
    assert again["SuccessfulFleetDeletions"] == []
    assert [(f["FleetId"], f["Error"]["Code"]) for f in again["UnsuccessfulFleetDeletions"]] == [
        (gone["FleetId"], "fleetNotInDeletableState"),
        ("fleet-0123abcd-0123-4567-89ab-0123456789ab", "fleetIdDoesNotExist"),
        ("nope", "fleetIdMalformed"),
    ]
    kept = _fleet(ec2c, lt, overrides[1:], strategy="capacity-optimized-prioritized")
    with pytest.raises(ClientError) as refused:
        ec2c.delete_fleets(FleetIds=[kept["FleetId"]], TerminateInstances=False)
    assert refused.value.response["Error"]["Code"] == "InvalidParameterCombination"
    assert ec2c.describe_fleets(FleetIds=[kept["FleetId"]])["Fleets"][0]["FleetState"] == "active"
    ec2c.delete_fleets(FleetIds=[kept["FleetId"]], TerminateInstances=True)
    wait_state(ec2c, kept["Instances"][0]["InstanceIds"][0], "terminated")
    ec2c.delete_launch_template(LaunchTemplateId=lt)
    assert cloud.provider.resources() == []


def test_instant_fleet_lowest_price_and_no_capacity_at_all(cloud):
    ec2c = client(cloud)
    ami = newest(ec2c, "debian-12-arm64-*", "arm64")["ImageId"]
    lt = _template(ec2c, ami)
    overrides = [{"InstanceType": t} for t in ("m7g.2xlarge", "a1.2xlarge", "c7g.2xlarge")]
    reply = _fleet(ec2c, lt, overrides, strategy="price-capacity-optimized")
    [launched] = reply["Instances"]
    cheapest = min(
        (ec2_catalog.spot_price(o["InstanceType"], z), o["InstanceType"], z)
        for o in overrides
        for z in ec2_moto.zones_offering("us-east-1", o["InstanceType"])
    )
    assert launched["InstanceType"] == cheapest[1]
    inst = wait_state(ec2c, launched["InstanceIds"][0], "running")
    assert inst["Placement"]["AvailabilityZone"] == cheapest[2]
    assert reply["Errors"] == []

    cloud.provider.set_faults({"capacity": [{"instance_type": "*"}]})
    reply = _fleet(ec2c, lt, overrides, capacity_type="on-demand")
    assert reply["Instances"] == []
    assert sorted(e["LaunchTemplateAndOverrides"]["Overrides"]["InstanceType"] for e in reply["Errors"]) == sorted(
        o["InstanceType"] for o in overrides
    )
    assert {e["Lifecycle"] for e in reply["Errors"]} == {"on-demand"}


def test_instant_fleet_on_demand_prioritized_and_zone_checks(cloud):
    ec2c = client(cloud)
    ami = newest(ec2c, "debian-12-amd64-*", "x86_64")["ImageId"]
    lt = _template(ec2c, ami)
    overrides = [
        {"InstanceType": "c5.metal", "AvailabilityZone": "us-east-1e", "Priority": 0},  # not offered there
        {"InstanceType": "c7g.2xlarge", "Priority": 1},  # wrong architecture for the AMI
        {"InstanceType": "m5.metal", "AvailabilityZone": "us-east-1b", "Priority": 2},
        {"InstanceType": "c5.metal", "AvailabilityZone": "us-east-1a", "Priority": 3},
    ]
    reply = _fleet(ec2c, lt, overrides, capacity_type="on-demand", strategy="prioritized")
    [launched] = reply["Instances"]
    assert launched["InstanceType"] == "m5.metal" and launched["Lifecycle"] == "on-demand"
    assert [e["ErrorCode"] for e in reply["Errors"]] == ["Unsupported", "InvalidParameterValue"]
    inst = wait_state(ec2c, launched["InstanceIds"][0], "running")
    assert inst["Placement"]["AvailabilityZone"] == "us-east-1b"
    assert "InstanceLifecycle" not in inst


def test_fleet_and_spot_request_instances_in_a_default_subnet_get_a_public_ip(cloud):
    ec2c = client(cloud)
    ami = newest(ec2c, "debian-12-arm64-*", "arm64")["ImageId"]
    subnet = ec2c.describe_subnets(Filters=[{"Name": "availability-zone", "Values": ["us-east-1c"]}])["Subnets"][0]
    assert subnet["MapPublicIpOnLaunch"] is True
    lt = _template(ec2c, ami)
    reply = _fleet(ec2c, lt, [{"InstanceType": "c7g.2xlarge", "SubnetId": subnet["SubnetId"]}])
    inst = wait_state(ec2c, reply["Instances"][0]["InstanceIds"][0], "running")
    assert inst["PublicIpAddress"] == cloud.pool.booted[-1].ip
    assert inst["Placement"]["AvailabilityZone"] == "us-east-1c"
    sir = ec2c.request_spot_instances(
        LaunchSpecification={"ImageId": ami, "InstanceType": "c7g.2xlarge", "SubnetId": subnet["SubnetId"]}
    )["SpotInstanceRequests"][0]
    iid = ec2c.describe_spot_instance_requests(SpotInstanceRequestIds=[sir["SpotInstanceRequestId"]])[
        "SpotInstanceRequests"
    ][0]["InstanceId"]
    assert wait_state(ec2c, iid, "running")["PublicIpAddress"] == cloud.pool.booted[-1].ip


def test_spot_price_history_is_plausible(cloud):
    ec2c = client(cloud)
    types = ["a1.2xlarge", "c6g.2xlarge", "c7g.2xlarge", "m7g.2xlarge", "c5.metal", "m5.metal"]
    history = ec2c.describe_spot_price_history(InstanceTypes=types, ProductDescriptions=["Linux/UNIX"])[
        "SpotPriceHistory"
    ]
    assert {h["InstanceType"] for h in history} == set(types)
    for h in history:
        price = float(h["SpotPrice"])
        assert (
            0.2 * ec2_catalog.on_demand_price(h["InstanceType"])
            < price
            < ec2_catalog.on_demand_price(h["InstanceType"])
        )
        assert h["ProductDescription"] == "Linux/UNIX"
    metal = [float(h["SpotPrice"]) for h in history if h["InstanceType"] == "c5.metal"]
    small = [float(h["SpotPrice"]) for h in history if h["InstanceType"] == "c7g.2xlarge"]
    assert min(metal) > 5 * max(small)
    now = ec2c.describe_spot_price_history(
        InstanceTypes=["c5.metal"],
        ProductDescriptions=["Linux/UNIX"],
        StartTime=time.time(),
        Filters=[{"Name": "availability-zone", "Values": ["us-east-1a"]}],
    )["SpotPriceHistory"]
    assert len(now) == 1 and now[0]["AvailabilityZone"] == "us-east-1a"
    assert float(now[0]["SpotPrice"]) == ec2_catalog.spot_price("c5.metal", "us-east-1a")
    zone = ec2c.describe_spot_price_history(InstanceTypes=["c5.metal"], AvailabilityZone="us-east-1b", MaxResults=20)
    assert {h["AvailabilityZone"] for h in zone["SpotPriceHistory"]} == {"us-east-1b"}
    assert len(zone["SpotPriceHistory"]) == 4  # now and before, two product descriptions
    newest = max(zone["SpotPriceHistory"], key=lambda h: h["Timestamp"])
    assert float(newest["SpotPrice"]) == ec2_catalog.spot_price("c5.metal", "us-east-1b")


def test_resources_list_what_leaks_and_reset_empties(cloud):
    ec2c = client(cloud)
    ami = newest(ec2c, "debian-12-amd64-*", "x86_64")["ImageId"]
    assert cloud.provider.resources() == []
    ec2c.create_key_pair(
        KeyName="nf-k",
        KeyType="ed25519",
        TagSpecifications=[{"ResourceType": "key-pair", "Tags": [{"Key": "nixforge-build-id", "Value": "r"}]}],
    )
    ec2c.create_security_group(GroupName="nf-sg", Description="x")
    ec2c.create_volume(AvailabilityZone="us-east-1a", Size=8, VolumeType="gp3")
    _template(ec2c, ami, name="nf-r")
    ec2c.run_instances(ImageId=ami, InstanceType="t3.micro", MinCount=1, MaxCount=1)
    ec2c.request_spot_instances(
        LaunchSpecification={"ImageId": ami, "InstanceType": "t3.micro"}, InstanceCount=1, Type="one-time"
    )
    kinds = sorted(r["type"] for r in cloud.provider.resources())
    assert kinds == sorted(
        [
            "key-pair",
            "security-group",
            "volume",  # the gp3 one
            "volume",  # root of the instance
            "volume",  # root of the spot instance
            "launch-template",
            "instance",
            "instance",
            "spot-instance-request",
        ]
    )
    [kp] = [r for r in cloud.provider.resources() if r["type"] == "key-pair"]
    assert kp["tags"] == {"nixforge-build-id": "r"}
    deadline = time.monotonic() + HANG_GUARD
    while len(cloud.provider.attached_hosts()) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # terminating the spot request's instance closes the one-time request
    sir = ec2c.describe_spot_instance_requests()["SpotInstanceRequests"][0]
    ec2c.terminate_instances(InstanceIds=[sir["InstanceId"]])
    assert ec2c.describe_spot_instance_requests()["SpotInstanceRequests"][0]["State"] == "closed"
    booted = len(cloud.pool.booted)
    cloud.provider.reset()
    assert cloud.provider.resources() == []
    assert booted >= 2 and cloud.pool.hosts() == []
    assert len(ec2c.describe_images(Owners=[DEBIAN])["Images"]) > 20


def test_a_terminated_instance_holds_its_security_group_for_the_configured_while(cloud):
    """As on EC2, DeleteSecurityGroup answers DependencyViolation for a while after the instance
    terminated (``security_group_hold``); each refusal is counted, then the group goes."""
    ec2c = client(cloud)
    group = ec2c.create_security_group(GroupName="held-after", Description="held")["GroupId"]
    # held longer than any stall between two calls, then shortened: released once it is over
    cloud.provider.set_faults({"security_group_hold": {"seconds": HANG_GUARD}})
    try:
        ami = newest(ec2c, "debian-12-amd64-*", "x86_64")["ImageId"]
        iid = ec2c.run_instances(
            ImageId=ami, InstanceType="t3.micro", MinCount=1, MaxCount=1, SecurityGroupIds=[group]
        )["Instances"][0]["InstanceId"]
        assert wait_state(ec2c, iid, "running")
        asked = time.monotonic()  # the termination (which the hold counts from) comes after this
        ec2c.terminate_instances(InstanceIds=[iid])
        assert wait_state(ec2c, iid, "terminated")
        with pytest.raises(ClientError) as err:
            ec2c.delete_security_group(GroupId=group)
        assert err.value.response["Error"]["Code"] == "DependencyViolation"
        served = cloud.provider.get_faults()["served"]
        assert served["security_group_in_use"]["DeleteSecurityGroup"] >= 1, served
        hold = 0.5
        cloud.provider.set_faults({"security_group_hold": {"seconds": hold}})
        deadline = time.monotonic() + HANG_GUARD
        while True:
            try:
                ec2c.delete_security_group(GroupId=group)
                break
            except ClientError as exc:
                assert exc.response["Error"]["Code"] == "DependencyViolation"
                assert time.monotonic() < deadline, "the group stayed in use"
                time.sleep(0.1)
        assert time.monotonic() - asked >= hold  # never released before the hold is over
    finally:
        cloud.provider.set_faults({})
    with pytest.raises(FaultError, match=r"security_group_hold\.seconds"):
        cloud.provider.set_faults({"security_group_hold": {"seconds": -1}})


def test_a_launch_template_shows_tags_changed_after_its_creation(cloud):
    """CreateTags on a launch template reaches DescribeLaunchTemplates, as on EC2 (moto
    copied the tags at creation, so a moved expiry was never seen by the reaper)."""
    ec2c = client(cloud)
    spec = [
        {"ResourceType": "launch-template", "Tags": [{"Key": "nixforge-expires-at", "Value": "2099-01-01T00:00:00Z"}]}
    ]
    lt = ec2c.create_launch_template(
        LaunchTemplateName="nf-retagged", LaunchTemplateData={"InstanceType": "t3.micro"}, TagSpecifications=spec
    )["LaunchTemplate"]["LaunchTemplateId"]
    ec2c.create_tags(Resources=[lt], Tags=[{"Key": "nixforge-expires-at", "Value": "2026-01-01T00:00:00Z"}])
    described = ec2c.describe_launch_templates(LaunchTemplateIds=[lt])["LaunchTemplates"][0]
    assert {t["Key"]: t["Value"] for t in described["Tags"]} == {"nixforge-expires-at": "2026-01-01T00:00:00Z"}
    ec2c.delete_launch_template(LaunchTemplateId=lt)


def test_a_spot_interruption_gives_one_notice_before_the_termination(cloud):
    """The notice comes first (once; it uses up the fault's count), with an EventBridge-style
    warning; EC2's reclaim follows notice_seconds later."""
    ec2c = client(cloud)
    ami = newest(ec2c, "debian-12-amd64-*", "x86_64")["ImageId"]
    tags = [{"ResourceType": "instance", "Tags": [{"Key": "nixforge-build-id", "Value": "notice"}]}]
    iid = ec2c.run_instances(
        ImageId=ami,
        InstanceType="t3.micro",
        MinCount=1,
        MaxCount=1,
        InstanceMarketOptions={"MarketType": "spot"},
        TagSpecifications=tags,
    )["Instances"][0]["InstanceId"]
    assert wait_state(ec2c, iid, "running")
    fault = {"spot_interruption": {"build_id": "notice", "after_seconds": 0, "notice_seconds": 2}}
    try:
        cloud.provider.set_faults(fault)
        deadline = time.monotonic() + HANG_GUARD
        while "spot_interruption_notice" not in cloud.provider.get_faults()["served"]:
            assert time.monotonic() < deadline, "no notice"
            time.sleep(0.05)
        inst = wait_state(ec2c, iid, "terminated")
        assert inst["StateReason"]["Code"] == "Server.SpotInstanceTermination"
        faults = cloud.provider.get_faults()
        # the reclaim came notice_seconds after the notice, not with it (the warning's time has
        # whole seconds, cut down: a lower bound of when the notice was given)
        noticed = calendar.timegm(time.strptime(faults["events"][0]["time"], "%Y-%m-%dT%H:%M:%SZ"))
        assert time.time() - noticed >= fault["spot_interruption"]["notice_seconds"]
        assert faults["served"] == {"spot_interruption_notice": {iid: 1}, "spot_interruption": {iid: 1}}
        assert faults["spot_interruption"]["count"] == 0
        assert [e["detail"] for e in faults["events"]] == [{"instance-id": iid, "instance-action": "terminate"}]
    finally:
        cloud.provider.set_faults({})


# -- nested virtualization (CpuOptions) ------------------------------------------------------


def test_run_instances_records_nested_virtualization_and_refuses_it_where_ec2_does(cloud):
    ec2c = client(cloud)
    ami = newest(ec2c, "debian-12-amd64-*", "x86_64")["ImageId"]
    nested = {"NestedVirtualization": "enabled"}
    with pytest.raises(ClientError) as info:
        ec2c.run_instances(ImageId=ami, InstanceType="c6i.2xlarge", MinCount=1, MaxCount=1, CpuOptions=nested)
    error = info.value.response["Error"]
    assert error["Code"] == "UnsupportedOperation"
    assert "c6i.2xlarge" in error["Message"] and "nested virtualization" in error["Message"]
    assert [r for r in cloud.provider.resources() if r["type"] == "instance"] == []  # nothing launched

    iid = ec2c.run_instances(ImageId=ami, InstanceType="c8i.2xlarge", MinCount=1, MaxCount=1, CpuOptions=nested)[
        "Instances"
    ][0]["InstanceId"]
    inst = wait_state(ec2c, iid, "running")
    assert inst["CpuOptions"]["NestedVirtualization"] == "enabled"
    plain = ec2c.run_instances(ImageId=ami, InstanceType="c8i.2xlarge", MinCount=1, MaxCount=1)["Instances"][0]
    assert "NestedVirtualization" not in wait_state(ec2c, plain["InstanceId"], "running")["CpuOptions"]
    described = ec2c.describe_instance_types(InstanceTypes=["c8i.2xlarge", "c6i.2xlarge"])["InstanceTypes"]
    features = {t["InstanceType"]: t["ProcessorInfo"].get("SupportedFeatures", []) for t in described}
    assert "nested-virtualization" in features["c8i.2xlarge"]
    assert "nested-virtualization" not in features["c6i.2xlarge"]


def test_instant_fleet_from_a_nested_template_skips_types_without_support(cloud):
    ec2c = client(cloud)
    ami = newest(ec2c, "debian-12-amd64-*", "x86_64")["ImageId"]
    lt = _template(ec2c, ami, name="nf-nested", CpuOptions={"NestedVirtualization": "enabled"})
    overrides = [{"InstanceType": "c6i.2xlarge", "Priority": 0}, {"InstanceType": "m8i.2xlarge", "Priority": 1}]
    reply = _fleet(ec2c, lt, overrides, capacity_type="on-demand", strategy="prioritized")
    [launched] = reply["Instances"]
    assert launched["InstanceType"] == "m8i.2xlarge"
    assert {e["ErrorCode"] for e in reply["Errors"]} == {"UnsupportedOperation"}
    inst = wait_state(ec2c, launched["InstanceIds"][0], "running")
    assert inst["CpuOptions"]["NestedVirtualization"] == "enabled"
    assert ec2.wants_kvm(cloud.provider.attached_hosts_full()[inst["InstanceId"]].instance)

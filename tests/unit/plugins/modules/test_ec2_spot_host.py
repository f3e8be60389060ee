"""Pure logic of ec2_spot_host: candidates, prices, user data, input validation."""

from __future__ import annotations

import base64
import datetime
import email
import json
import os
import subprocess
import sys

import pytest
import yaml
from ansible_collections.nixforge.images.plugins.module_utils._base import _sshkeys
from ansible_collections.nixforge.images.plugins.module_utils._base._errors import UserInputError
from ansible_collections.nixforge.images.plugins.module_utils._base._identity import BuildIdentity
from ansible_collections.nixforge.images.plugins.module_utils._base._sshkeys import HostKey
from ansible_collections.nixforge.images.plugins.module_utils._ec2 import _fleet as _ec2_fleet
from ansible_collections.nixforge.images.plugins.module_utils._ec2 import _input as _ec2_input
from ansible_collections.nixforge.images.plugins.module_utils._ec2 import _resources as _ec2_build
from ansible_collections.nixforge.images.plugins.modules import ec2_spot_host as m

UTC = datetime.timezone.utc
EXPIRY = datetime.datetime(2026, 11, 22, 13, 0, tzinfo=UTC)
HOST_PUB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINsXfX44giElHYMcHMkMa/okQsCoDTrLTrVWXgIc5Oy4 host"
HOST_PRIV = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU=\n-----END OPENSSH PRIVATE KEY-----"
USER_PUB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl user"

SUBNETS = [
    {"SubnetId": "subnet-b", "AvailabilityZone": "us-east-2b"},
    {"SubnetId": "subnet-a", "AvailabilityZone": "us-east-2a"},
]


def identity():
    return BuildIdentity("b1", "default", EXPIRY)


# -- candidates ---------------------------------------------------------------------------


def test_candidates_keep_type_preference_and_sort_zones():
    candidates = _ec2_fleet.order_candidates(["c7g.2xlarge", "a1.2xlarge"], SUBNETS)
    assert [(c["instance_type"], c["availability_zone"]) for c in candidates] == [
        ("c7g.2xlarge", "us-east-2a"),
        ("c7g.2xlarge", "us-east-2b"),
        ("a1.2xlarge", "us-east-2a"),
        ("a1.2xlarge", "us-east-2b"),
    ]
    assert [c["priority"] for c in candidates] == [0, 1, 2, 3]


def test_default_types_follow_architecture_and_dedupe():
    assert _ec2_fleet.instance_type_list(None, "arm64") == ["a1.2xlarge", "c6g.2xlarge", "c7g.2xlarge", "m7g.2xlarge"]
    assert _ec2_fleet.instance_type_list(None, "x86_64")[0] == "c6i.2xlarge"
    assert _ec2_fleet.instance_type_list(["c7g.2xlarge", " c7g.2xlarge", "a1.2xlarge"], "arm64") == [
        "c7g.2xlarge",
        "a1.2xlarge",
    ]
    with pytest.raises(UserInputError) as info:
        _ec2_fleet.instance_type_list(["", " "], "arm64")
    assert info.value.parameter == "instance_types"


def test_default_arm64_types_are_all_priced():
    for instance_type in _ec2_fleet.DEFAULT_INSTANCE_TYPES["arm64"] + _ec2_fleet.DEFAULT_INSTANCE_TYPES["x86_64"]:
        assert instance_type in _ec2_fleet.ON_DEMAND_PRICES


def test_fleet_errors_and_drop_failed():
    reply = {
        "Errors": [
            {
                "LaunchTemplateAndOverrides": {"Overrides": {"InstanceType": "c7g.2xlarge", "SubnetId": "subnet-a"}},
                "Lifecycle": "spot",
                "ErrorCode": "InsufficientInstanceCapacity",
                "ErrorMessage": "no capacity",
            }
        ]
    }
    errors = _ec2_fleet.fleet_errors(reply)
    assert errors == [
        {
            "instance_type": "c7g.2xlarge",
            "subnet_id": "subnet-a",
            "availability_zone": None,
            "lifecycle": "spot",
            "code": "InsufficientInstanceCapacity",
            "message": "no capacity",
        }
    ]
    candidates = _ec2_fleet.order_candidates(["c7g.2xlarge", "a1.2xlarge"], SUBNETS)
    remaining, others = _ec2_fleet.drop_failed(candidates, errors)
    assert others == []
    assert [(c["instance_type"], c["subnet_id"]) for c in remaining] == [
        ("c7g.2xlarge", "subnet-b"),
        ("a1.2xlarge", "subnet-a"),
        ("a1.2xlarge", "subnet-b"),
    ]


def test_drop_failed_type_wide_error_and_anonymous_error():
    candidates = _ec2_fleet.order_candidates(["c7g.2xlarge", "a1.2xlarge"], SUBNETS)
    remaining, _errors = _ec2_fleet.drop_failed(
        candidates, [{"instance_type": "c7g.2xlarge", "code": "InsufficientInstanceCapacity"}]
    )
    assert {c["instance_type"] for c in remaining} == {"a1.2xlarge"}
    remaining, _errors = _ec2_fleet.drop_failed(candidates, [{"code": "InsufficientInstanceCapacity"}])
    assert remaining == candidates[1:]  # charged to the first candidate: progress guaranteed


def test_drop_failed_keeps_other_errors_apart():
    candidates = _ec2_fleet.order_candidates(["c7g.2xlarge"], SUBNETS)
    remaining, others = _ec2_fleet.drop_failed(
        candidates, [{"instance_type": "c7g.2xlarge", "code": "InvalidParameterValue"}]
    )
    assert remaining == candidates
    assert others[0]["code"] == "InvalidParameterValue"


# -- prices -------------------------------------------------------------------------------


def test_price_defaults():
    # nothing sent: EC2's default max price is the region's on-demand price; table value reported
    assert _ec2_fleet.price_for("c7g.2xlarge", None, {}) == (None, 0.289, "table")
    assert _ec2_fleet.price_for("x9.huge", None, {}) == (None, None, "unknown")
    assert _ec2_fleet.price_for("c7g.2xlarge", "0.1", {}) == ("0.1", 0.1, "max_price")
    assert _ec2_fleet.price_for("c7g.2xlarge", None, {"c7g.2xlarge": 0.31}) == ("0.31", 0.31, "on_demand_prices")


@pytest.mark.parametrize("value", ["0", "-1", "abc", "nan", "inf"])
def test_max_price_validation(value):
    with pytest.raises(UserInputError) as info:
        _ec2_fleet.validate_max_price(value)
    assert info.value.parameter == "max_price"


def test_max_price_empty_means_default():
    assert _ec2_fleet.validate_max_price("") is None
    assert _ec2_fleet.validate_max_price(None) is None
    assert _ec2_fleet.validate_max_price(" 0.25 ") == "0.25"


def test_price_override_validation():
    assert _ec2_fleet.validate_price_overrides({"a1.2xlarge": "0.2"}) == {"a1.2xlarge": 0.2}
    with pytest.raises(UserInputError) as info:
        _ec2_fleet.validate_price_overrides({"a1.2xlarge": "cheap"})
    assert info.value.parameter == "on_demand_prices"


# -- ssh_cidr and keys --------------------------------------------------------------------


def test_cidrs_valid():
    assert _ec2_input.parse_ssh_cidrs(["203.0.113.7/32", "2001:db8::/64"]) == ["203.0.113.7/32", "2001:db8::/64"]
    assert _ec2_input.is_wide_open(["0.0.0.0/0"])
    assert not _ec2_input.is_wide_open(["10.0.0.0/8"])


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("10.0.0.1", "no prefix length"),
        ("10.0.0.300/32", "not a valid CIDR"),
        ("10.0.0.1/24", "host bits"),
        ("10.0.0.0/33", "not a valid CIDR"),
        ("banana/8", "not a valid CIDR"),
    ],
)
def test_cidrs_malformed_name_parameter(value, fragment):
    with pytest.raises(UserInputError) as info:
        _ec2_input.parse_ssh_cidrs([value])
    assert info.value.parameter == "ssh_cidr"
    assert fragment in str(info.value)
    assert str(info.value).startswith("Parameter 'ssh_cidr' failed:")


def test_cidr_host_bits_hint_suggests_both_forms():
    with pytest.raises(UserInputError) as info:
        _ec2_input.parse_ssh_cidrs(["10.0.0.1/24"])
    assert "10.0.0.0/24" in str(info.value) and "10.0.0.1/32" in str(info.value)


def test_cidrs_empty():
    with pytest.raises(UserInputError) as info:
        _ec2_input.parse_ssh_cidrs([])
    assert info.value.parameter == "ssh_cidr"


def test_public_key_validation_never_echoes_private_key():
    assert _sshkeys.validate_public_key(USER_PUB + "\n", "public_key") == USER_PUB
    with pytest.raises(UserInputError) as info:
        _sshkeys.validate_public_key(HOST_PRIV, "public_key")
    assert "b3BlbnNzaC1rZXktdjEAAAAABG5vbmU" not in str(info.value)
    assert info.value.parameter == "public_key"
    for bad in ["", "hello", "ssh-ed25519", "ssh-ed25519 !!!notbase64!!!"]:
        with pytest.raises(UserInputError):
            _sshkeys.validate_public_key(bad, "public_key")


def test_host_keys():
    key_type, private, public = _sshkeys.validate_host_key(HOST_PRIV, HOST_PUB)
    assert key_type == "ed25519"
    assert private.endswith("-----\n") and public == HOST_PUB
    with pytest.raises(UserInputError) as info:
        _sshkeys.validate_host_key(None, HOST_PUB)
    assert info.value.parameter == "host_key_private"
    with pytest.raises(UserInputError) as info:
        _sshkeys.validate_host_key("not a key", HOST_PUB)
    assert info.value.parameter == "host_key_private"
    assert "not a key" not in str(info.value)
    with pytest.raises(UserInputError) as info:
        _sshkeys.validate_host_key(HOST_PRIV, "ssh-dss AAAAB3NzaC1kc3M= x")
    assert info.value.parameter == "host_key_public"


# -- user data ----------------------------------------------------------------------------


def load_cloud_config(text):
    assert text.startswith("#cloud-config\n")
    return yaml.safe_load(text)


def test_user_data_has_host_key_authorized_key_and_poweroff():
    text = _ec2_input.render_user_data(identity(), HostKey("ed25519", HOST_PRIV + "\n", HOST_PUB), [USER_PUB])
    config = load_cloud_config(text)
    assert config["ssh_deletekeys"] is True
    assert config["ssh_keys"] == {"ed25519_private": HOST_PRIV + "\n", "ed25519_public": HOST_PUB}
    assert config["ssh_authorized_keys"] == [USER_PUB]
    assert config["ssh_genkeytypes"] == []
    guard, timer = config["bootcmd"]
    assert str(int(EXPIRY.timestamp())) in guard[2] and "systemctl poweroff" in guard[2]
    assert timer[0] == "systemd-run"
    assert "--on-calendar=2026-11-22 13:00:00 UTC" in timer
    assert timer[-2:] == ["systemctl", "poweroff"]
    # the private key is a readable block, byte for byte
    assert "ed25519_private: |" in text


def test_user_data_merges_cloud_config():
    extra = "#cloud-config\nruncmd:\n  - [touch, /tmp/x]\nbootcmd:\n  - echo hi\npackages: [zstd]\n"
    config = load_cloud_config(
        _ec2_input.render_user_data(identity(), HostKey("ed25519", HOST_PRIV, HOST_PUB), [], extra)
    )
    assert config["runcmd"] == [["touch", "/tmp/x"]]
    assert config["bootcmd"][-1] == "echo hi" and config["bootcmd"][1][0] == "systemd-run"
    assert config["packages"] == ["zstd"]
    assert "ssh_authorized_keys" not in config


@pytest.mark.parametrize(
    "extra",
    ["#cloud-config\nssh_keys: {}\n", "#cloud-config\n- a list\n", "#cloud-config\nruncmd: oops\n", "#cloud-config\n{"],
)
def test_user_data_bad_cloud_config_names_parameter(extra):
    with pytest.raises(UserInputError) as info:
        _ec2_input.render_user_data(identity(), HostKey("ed25519", HOST_PRIV, HOST_PUB), [], extra)
    assert info.value.parameter == "user_data"


def test_user_data_script_becomes_multipart():
    text = _ec2_input.render_user_data(identity(), HostKey("ed25519", HOST_PRIV, HOST_PUB), [], "#!/bin/sh\necho hi\n")
    message = email.message_from_string(text)
    parts = [p for p in message.walk() if not p.is_multipart()]
    assert [p.get_content_type() for p in parts] == ["text/cloud-config", "text/x-shellscript"]
    assert parts[0].get_payload(decode=True).decode().startswith("#cloud-config")


def test_encode_user_data_limit():
    assert base64.b64decode(_ec2_input.encode_user_data("#cloud-config\n")) == b"#cloud-config\n"
    with pytest.raises(UserInputError) as info:
        _ec2_input.encode_user_data("x" * (_ec2_input.USER_DATA_LIMIT + 1))
    assert info.value.parameter == "user_data"


# -- argument spec and docs agree -------------------------------------------------------


def test_secrets_are_no_log():
    spec = m.Ec2SpotHost.full_argument_spec()
    for name in ("secret_key", "session_token", "host_key_private"):
        assert spec[name]["no_log"] is True, name
    for name in ("public_key", "host_key_public", "key_name", "access_key"):
        assert spec[name].get("no_log") is False, name


def test_documented_options_match_the_spec(tmp_path):
    """What ansible-doc renders (fragments included) is what the module accepts."""
    root = next(p for p in sys.path if os.path.isdir(os.path.join(p, "ansible_collections", "nixforge", "images")))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=root, ANSIBLE_HOME=str(tmp_path))
    env.pop("ANSIBLE_CONFIG", None)
    out = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "ansible-doc"), "--json", "nixforge.images.ec2_spot_host"],
        env=env,
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    doc = json.loads(out)["nixforge.images.ec2_spot_host"]["doc"]
    documented = doc["options"]
    spec = m.Ec2SpotHost.full_argument_spec()
    assert set(documented) == set(spec)
    for name, option in spec.items():
        assert documented[name].get("default") == option.get("default"), name
        assert documented[name].get("type", "str") == option.get("type", "str"), name
        assert sorted(documented[name].get("aliases", [])) == sorted(option.get("aliases", [])), name
        assert documented[name].get("choices") == option.get("choices"), name
        assert bool(documented[name].get("required")) == bool(option.get("required")), name
    assert set(doc["attributes"]) >= {"check_mode", "diff_mode", "platform", "action_group"}


# -- the fleet loop and removal, against a scripted client ------------------------------


class FakeClient:
    """Answers `call(op, ...)` from a script: {op: [reply or NixforgeError, ...]}; records calls."""

    def __init__(self, script):
        self.script = {op: list(replies) for op, replies in script.items()}
        self.calls = []

    def call(self, operation, what=None, parameter=None, ignore_codes=(), **kwargs):
        self.calls.append((operation, kwargs))
        replies = self.script.get(operation)
        reply = replies.pop(0) if replies and len(replies) > 1 else (replies[0] if replies else {})
        if isinstance(reply, Exception):
            if getattr(reply, "code", None) in tuple(ignore_codes):
                return None
            raise reply
        return reply

    def paginate(self, operation, key, what=None, **kwargs):
        return (self.call(operation, what=what, **kwargs) or {}).get(key, [])

    def ops(self, name):
        return [kw for op, kw in self.calls if op == name]


def make_fleet(client, max_price=None):
    """The fleet loop as ec2_spot_host runs it (default allocation strategy)."""
    return _ec2_fleet.Fleet(client, "price-capacity-optimized", max_price, {}, {}, warn=lambda msg: None)


def capacity(instance_type, subnet, code="InsufficientInstanceCapacity"):
    return {
        "LaunchTemplateAndOverrides": {"Overrides": {"InstanceType": instance_type, "SubnetId": subnet}},
        "Lifecycle": "spot",
        "ErrorCode": code,
        "ErrorMessage": "no capacity",
    }


def launched(instance_type, subnet, lifecycle="spot"):
    return {
        "FleetId": "fleet-ok",
        "Instances": [
            {
                "LaunchTemplateAndOverrides": {"Overrides": {"InstanceType": instance_type, "SubnetId": subnet}},
                "Lifecycle": lifecycle,
                "InstanceIds": ["i-1"],
                "InstanceType": instance_type,
            }
        ],
    }


CANDIDATES = _ec2_fleet.order_candidates(["c7g.2xlarge", "a1.2xlarge"], SUBNETS)


def test_fleet_loop_errors_in_reply_then_next_candidates():
    client = FakeClient(
        {
            "create_fleet": [
                {
                    "FleetId": "fleet-1",
                    "Errors": [capacity("c7g.2xlarge", "subnet-a"), capacity("c7g.2xlarge", "subnet-b")],
                },
                launched("a1.2xlarge", "subnet-a"),
            ]
        }
    )
    module = make_fleet(client)
    fleet_id, instance_id, lifecycle, candidate = module.launch_in_market("spot", CANDIDATES, "lt-1")
    assert (fleet_id, instance_id, lifecycle, candidate["instance_type"]) == ("fleet-ok", "i-1", "spot", "a1.2xlarge")
    first, second = client.ops("create_fleet")
    assert len(first["LaunchTemplateConfigs"][0]["Overrides"]) == 4
    assert [o["InstanceType"] for o in second["LaunchTemplateConfigs"][0]["Overrides"]] == ["a1.2xlarge"] * 2
    assert first["SpotOptions"] == {"AllocationStrategy": "price-capacity-optimized"}
    assert first["TargetCapacitySpecification"] == {"TotalTargetCapacity": 1, "DefaultTargetCapacityType": "spot"}
    assert "MaxPrice" not in first["LaunchTemplateConfigs"][0]["Overrides"][0]  # EC2's default: on-demand price
    assert [e["availability_zone"] for e in module.candidate_errors] == ["us-east-2a", "us-east-2b"]
    assert module.fleet_ids == ["fleet-1", "fleet-ok"]  # both recorded for removal


def test_fleet_loop_raised_capacity_error_is_charged_to_first_candidate():
    from ansible_collections.nixforge.images.plugins.module_utils._base._errors import ProviderError

    error = ProviderError("InsufficientInstanceCapacity: none", code="InsufficientInstanceCapacity")
    client = FakeClient({"create_fleet": [error, launched("c7g.2xlarge", "subnet-b")]})
    module = make_fleet(client, "0.5")
    result = module.launch_in_market("spot", CANDIDATES, "lt-1")
    assert result is not None and result[3]["subnet_id"] == "subnet-b"
    second = client.ops("create_fleet")[1]["LaunchTemplateConfigs"][0]["Overrides"]
    assert len(second) == 3 and all(o["MaxPrice"] == "0.5" for o in second)


def test_fleet_loop_all_candidates_fail_returns_none():
    errors = [capacity(c["instance_type"], c["subnet_id"]) for c in CANDIDATES]
    client = FakeClient({"create_fleet": [{"FleetId": "fleet-1", "Errors": errors}]})
    module = make_fleet(client)
    assert module.launch_in_market("spot", CANDIDATES, "lt-1") is None
    assert len(client.ops("create_fleet")) == 1
    assert len(module.candidate_errors) == 4


def test_fleet_loop_other_error_fails_at_once():
    from ansible_collections.nixforge.images.plugins.module_utils._base._errors import ProviderError

    client = FakeClient(
        {"create_fleet": [{"FleetId": "f", "Errors": [capacity("c7g.2xlarge", "subnet-a", "InvalidParameterValue")]}]}
    )
    module = make_fleet(client)
    with pytest.raises(ProviderError) as info:
        module.launch_in_market("spot", CANDIDATES, "lt-1")
    assert info.value.code == "InvalidParameterValue"


def test_on_demand_uses_priorities():
    client = FakeClient({"create_fleet": [launched("c7g.2xlarge", "subnet-a", "on-demand")]})
    module = make_fleet(client)
    module.launch_in_market("on-demand", CANDIDATES, "lt-1")
    request = client.ops("create_fleet")[0]
    assert request["OnDemandOptions"] == {"AllocationStrategy": "prioritized"}
    assert [o["Priority"] for o in request["LaunchTemplateConfigs"][0]["Overrides"]] == [0.0, 1.0, 2.0, 3.0]
    assert "SpotOptions" not in request


def test_remove_build_order_and_fleet_fallback():
    from ansible_collections.nixforge.images.plugins.module_utils._base._errors import ProviderError

    tags = [{"Key": "nixforge-build-id", "Value": "b1"}]
    instance = {"InstanceId": "i-1", "State": {"Name": "running"}}
    client = FakeClient(
        {
            "describe_instances": [{"Reservations": [{"Instances": [instance]}]}, {"Reservations": []}],
            "describe_fleets": [
                {
                    "Fleets": [
                        {"FleetId": "f-1", "FleetState": "active", "Tags": tags},
                        {"FleetId": "f-old", "FleetState": "deleted_terminating", "Tags": tags},
                        {"FleetId": "f-other", "FleetState": "active", "Tags": []},
                    ]
                }
            ],
            "describe_launch_templates": [{"LaunchTemplates": [{"LaunchTemplateId": "lt-1"}]}],
            "describe_security_groups": [{"SecurityGroups": [{"GroupId": "sg-1"}]}],
            "describe_key_pairs": [{"KeyPairs": [{"KeyName": "nixforge-b1"}]}],
            "describe_volumes": [{"Volumes": []}],
            "delete_fleets": [
                # deleted meanwhile (e.g. by a concurrent teardown): done, not a failure
                {
                    "SuccessfulFleetDeletions": [],
                    "UnsuccessfulFleetDeletions": [
                        {"FleetId": "f-1", "Error": {"Code": "fleetNotInDeletableState", "Message": "deleted"}}
                    ],
                },
            ],
            "delete_security_group": [ProviderError("in use", code="DependencyViolation"), {}],
        }
    )
    resources = _ec2_build.BuildResources(client, identity(), wait=True, wait_timeout=30)
    removed = resources.remove_all()
    assert removed == {
        "instances": ["i-1"],
        "fleets": ["f-1"],
        "launch_templates": ["lt-1"],
        "security_groups": ["sg-1"],
        "key_pairs": ["nixforge-b1"],
        "volumes": [],
    }
    ops = [op for op, _args in client.calls if not op.startswith("describe")]
    assert ops == [
        "delete_fleets",
        "terminate_instances",
        "delete_launch_template",
        "delete_key_pair",
        "delete_security_group",
        "delete_security_group",
    ]
    # instant fleets go only with their instances: never TerminateInstances=false
    assert [kw["TerminateInstances"] for kw in client.ops("delete_fleets")] == [True]
    # the deletions that do not depend on the instance run while it terminates; the
    # security group waits for the termination
    every = [op for op, _args in client.calls]
    after = every[every.index("terminate_instances") :]
    assert after[:4] == ["terminate_instances", "delete_launch_template", "delete_key_pair", "describe_instances"]


def test_teardown_of_a_lone_instance_waits_until_it_is_terminated():
    running = {"Reservations": [{"Instances": [{"InstanceId": "i-1", "State": {"Name": "running"}}]}]}
    shutting = {"Reservations": [{"Instances": [{"InstanceId": "i-1", "State": {"Name": "shutting-down"}}]}]}
    client = FakeClient({"describe_instances": [running, shutting, {"Reservations": []}]})
    resources = _ec2_build.BuildResources(client, identity(), wait=True, wait_timeout=30)
    assert resources.remove_all()["instances"] == ["i-1"]
    ops = [op for op, _args in client.calls]
    waited = ["terminate_instances", "describe_instances", "describe_instances"]
    assert ops[ops.index("terminate_instances") :] == waited


def build_with_a_running_instance(**extra):
    running = {"Reservations": [{"Instances": [{"InstanceId": "i-1", "State": {"Name": "running"}}]}]}
    script = {
        "describe_instances": [running],
        "describe_launch_templates": [{"LaunchTemplates": [{"LaunchTemplateId": "lt-1"}]}],
        "describe_security_groups": [{"SecurityGroups": [{"GroupId": "sg-1"}]}],
        "describe_key_pairs": [{"KeyPairs": [{"KeyName": "nixforge-b1"}]}],
        "describe_volumes": [{"Volumes": [{"VolumeId": "vol-1"}]}],
    }
    script.update(extra)
    return FakeClient(script)


def test_a_teardown_that_does_not_wait_starts_the_termination_and_leaves_the_security_group():
    """wait=false (the whole pipelines): terminate, remove what does not depend on the instance, and
    hand the security group and volume on instead of waiting for the termination."""
    client = build_with_a_running_instance()
    resources = _ec2_build.BuildResources(client, identity(), wait=False, wait_timeout=30)
    left = {}
    removed, actions = resources.removal(resources.find(), left)
    for action in actions:
        action.do()
    assert left == {"security_groups": ["sg-1"], "volumes": ["vol-1"]}
    assert removed["security_groups"] == [] and removed["volumes"] == []
    assert removed["instances"] == ["i-1"] and removed["key_pairs"] == ["nixforge-b1"]
    done = [op for op, _args in client.calls if not op.startswith("describe")]
    assert done == ["terminate_instances", "delete_launch_template", "delete_key_pair"]
    # no wait: nothing is looked up after the termination started
    every = [op for op, _args in client.calls]
    assert every[every.index("terminate_instances") :] == done
    texts = ["remove instance i-1", "remove launch template lt-1", "remove key pair nixforge-b1"]
    assert [a.text for a in actions] == texts


def test_a_teardown_that_does_not_wait_removes_the_security_group_of_a_build_without_instances():
    client = build_with_a_running_instance(describe_instances=[{"Reservations": []}])
    resources = _ec2_build.BuildResources(client, identity(), wait=False, wait_timeout=30)
    left = {}
    removed, _actions = resources.removal(resources.find(), left)
    assert left == {} and removed["security_groups"] == ["sg-1"] and removed["volumes"] == ["vol-1"]


def test_teardown_reports_instances_ended_by_ec2_or_by_expiry():
    def instance(iid, code):
        return {"InstanceId": iid, "StateReason": {"Code": code, "Message": code + " message"}}

    client = FakeClient(
        {
            "describe_instances": [
                {
                    "Reservations": [
                        {
                            "Instances": [
                                instance("i-spot", "Server.SpotInstanceTermination"),
                                instance("i-expired", "Client.InstanceInitiatedShutdown"),
                                instance("i-ours", "Client.UserInitiatedShutdown"),
                            ]
                        }
                    ]
                }
            ]
        }
    )
    ended = _ec2_build.BuildResources(client, identity()).ended()
    assert [(e["instance_id"], e["code"]) for e in ended] == [
        ("i-spot", "Server.SpotInstanceTermination"),
        ("i-expired", "Client.InstanceInitiatedShutdown"),
    ]
    [call] = client.ops("describe_instances")
    states = next(f["Values"] for f in call["Filters"] if f["Name"] == "instance-state-name")
    assert "terminated" in states and "running" not in states


def test_a_create_whose_answer_was_lost_takes_the_resource_the_first_attempt_made():
    # the retry of a create EC2 had carried out meets the resource: the build's own is taken
    from ansible_collections.nixforge.images.plugins.module_utils._base._errors import ProviderError, UserInputError
    from ansible_collections.nixforge.images.plugins.module_utils._ec2 import _launch as _ec2_launch

    ours = [{"Key": "nixforge-build-id", "Value": "b1"}]
    client = FakeClient(
        {
            "describe_security_groups": [
                {"SecurityGroups": [{"GroupId": "sg-9", "Tags": ours}]},
            ],
            "create_security_group": [ProviderError("exists", code="InvalidGroup.Duplicate")],
            "describe_launch_templates": [
                {"LaunchTemplates": []},
                {"LaunchTemplates": [{"LaunchTemplateId": "lt-9", "Tags": ours}]},
            ],
            "create_launch_template": [
                ProviderError("exists", code="InvalidLaunchTemplateName.AlreadyExistsException")
            ],
            "describe_key_pairs": [{"KeyPairs": []}, {"KeyPairs": [{"KeyName": "k", "Tags": ours}]}],
            "import_key_pair": [ProviderError("exists", code="InvalidKeyPair.Duplicate")],
        }
    )
    launch = _ec2_launch.Launch(client, identity(), {"wait": True, "wait_timeout": 30}, warn=lambda msg: None)
    assert launch.ensure_security_group("vpc-1", ["192.0.2.1/32"], {}, None) == "sg-9"
    assert launch.create_launch_template({}, {}) == "lt-9"
    launch.import_key_pair("k", "ssh-ed25519 AAAA", {})
    assert len(client.ops("create_launch_template")[0]["ClientToken"]) == 32  # EC2's own idempotency too

    # a name taken by another build is refused, naming build_id; other errors stay errors
    theirs = [{"Key": "nixforge-build-id", "Value": "other"}]
    client = FakeClient(
        {
            "describe_key_pairs": [{"KeyPairs": []}, {"KeyPairs": [{"KeyName": "k", "Tags": theirs}]}],
            "import_key_pair": [ProviderError("exists", code="InvalidKeyPair.Duplicate")],
            "create_security_group": [ProviderError("no", code="UnauthorizedOperation")],
        }
    )
    launch = _ec2_launch.Launch(client, identity(), {"wait": True, "wait_timeout": 30}, warn=lambda msg: None)
    with pytest.raises(UserInputError, match="does not belong to build"):
        launch.import_key_pair("k", "ssh-ed25519 AAAA", {})
    with pytest.raises(ProviderError, match="no"):
        launch.ensure_security_group("vpc-1", ["192.0.2.1/32"], {}, None)

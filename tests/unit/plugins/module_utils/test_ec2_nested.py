"""EC2 nested virtualization: the catalogue, the refusal before anything is created, the
launch templates and the fleet's fallback (module_utils/_ec2/_nested.py and its users)."""

from __future__ import annotations

import pytest
from ansible_collections.nixforge.images.plugins.module_utils._base._errors import UserInputError
from ansible_collections.nixforge.images.plugins.module_utils._ec2 import _fleet as _ec2_fleet
from ansible_collections.nixforge.images.plugins.module_utils._ec2 import _input as _ec2_input
from ansible_collections.nixforge.images.plugins.module_utils._ec2 import _nested

SUBNETS = [
    {"SubnetId": "subnet-b", "AvailabilityZone": "us-east-2b"},
    {"SubnetId": "subnet-a", "AvailabilityZone": "us-east-2a"},
]


def described(instance_type: str, features=None, bare_metal: bool = False) -> dict:
    info = {"SupportedArchitectures": ["x86_64"]}
    if features is not None:
        info["SupportedFeatures"] = features
    return {"InstanceType": instance_type, "ProcessorInfo": info, "BareMetal": bare_metal}


@pytest.mark.parametrize(
    ("instance_type", "expected"),
    [
        ("c8i.2xlarge", True),
        ("C8I.4XLARGE ", True),
        ("m8i.large", True),
        ("r8i.2xlarge", True),
        ("c8i-flex.2xlarge", True),
        ("m8i-flex.xlarge", True),
        ("c8i.metal-48xl", False),  # bare metal: KVM without the option, which EC2 refuses there
        ("c7i.2xlarge", True),  # listed by DescribeInstanceTypes, not by the API reference
        ("m7i-flex.large", True),
        ("c8g.2xlarge", False),
        ("c8a.2xlarge", False),
        ("c6i.2xlarge", False),
        ("c8i", False),
    ],
)
def test_catalogue_knows_the_nested_virtualization_types(instance_type: str, expected: bool) -> None:
    assert _nested.catalogue_supports(instance_type) is expected


def test_kvm_kind() -> None:
    assert _nested.kvm_kind("c5.metal", False) == "bare-metal"
    assert _nested.kvm_kind("c7i.metal-24xl", True) == "bare-metal"
    assert _nested.kvm_kind("c8i.2xlarge", True) == "nested"
    assert _nested.kvm_kind("c8i.2xlarge", False) is None
    assert _nested.kvm_kind("c6i.2xlarge", True) is None


def test_classify_takes_ec2s_answer_over_the_catalogue() -> None:
    answer = {
        "c8i.2xlarge": described("c8i.2xlarge", ["nested-virtualization"]),
        # a type EC2 reports as capable that the catalogue does not list is accepted
        "c8id.2xlarge": described("c8id.2xlarge", ["nested-virtualization"]),
        "c5.metal": described("c5.metal", [], bare_metal=True),
        # no SupportedFeatures at all (an EC2-compatible API): the catalogue decides
        "m8i.2xlarge": described("m8i.2xlarge"),
    }
    kinds = _nested.classify(list(answer), answer)
    assert kinds == {
        "c8i.2xlarge": "nested",
        "c8id.2xlarge": "nested",
        "c5.metal": "bare-metal",
        "m8i.2xlarge": "nested",
    }
    assert _nested.template_groups(kinds) == {
        "nested": ["c8i.2xlarge", "c8id.2xlarge", "m8i.2xlarge"],
        "plain": ["c5.metal"],
    }


def test_classify_refuses_types_without_support_and_names_those_that_have_it() -> None:
    answer = {
        "c8i.2xlarge": described("c8i.2xlarge", ["nested-virtualization"]),
        "c6i.4xlarge": described("c6i.4xlarge", []),
        # EC2 says no even though the family looks right: EC2 wins
        "m8i.2xlarge": described("m8i.2xlarge", ["amd-sev-snp"]),
    }
    with pytest.raises(UserInputError) as info:
        _nested.classify(list(answer), answer)
    error = info.value
    assert error.parameter == "instance_types"
    assert "c6i.4xlarge, m8i.2xlarge support no nested virtualization" in error.msg
    assert "C8i, M8i, R8i" in error.msg
    hint = error.hint or ""
    for suggestion in ("c8i.4xlarge", "m8i.4xlarge", "r8i.4xlarge", "c8i.2xlarge"):
        assert suggestion in hint
    assert "Nothing was created" in hint


def test_suggestions_keep_the_sizes_and_fall_back_to_2xlarge() -> None:
    assert _nested.suggestions(["t3.micro", "c6i.xlarge", "c6i.xlarge"]) == [
        "c8i.2xlarge",
        "m8i.2xlarge",
        "r8i.2xlarge",
        "c8i.xlarge",
        "m8i.xlarge",
        "r8i.xlarge",
    ]


def test_instance_kvm_reads_the_cpu_options() -> None:
    nested = {"InstanceType": "c8i.2xlarge", "CpuOptions": {"CoreCount": 4, "NestedVirtualization": "enabled"}}
    assert _nested.instance_kvm(nested) == {"kvm": True, "nested_virtualization": True}
    assert _nested.instance_kvm({"InstanceType": "c8i.2xlarge", "CpuOptions": {"CoreCount": 4}}) == {
        "kvm": False,
        "nested_virtualization": False,
    }
    assert _nested.instance_kvm({"InstanceType": "m5.metal"}) == {"kvm": True, "nested_virtualization": False}


def test_every_nested_default_of_the_do_pipeline_has_a_catalogue_price() -> None:
    for instance_type in ("c8i.2xlarge", "c8i-flex.2xlarge", "m8i.2xlarge", "c8i.4xlarge", "m8i.4xlarge"):
        assert instance_type in _ec2_fleet.ON_DEMAND_PRICES
    assert _ec2_fleet.ON_DEMAND_PRICES["c8i.2xlarge"] < _ec2_fleet.ON_DEMAND_PRICES["c5.metal"] / 10


def test_nested_virtualization_needs_x86_64_before_any_api_call() -> None:
    params = {
        "host_key_private": None,
        "host_key_public": None,
        "architecture": "arm64",
        "image_id": None,
        "nested_virtualization": True,
        "instance_types": None,
    }
    # the architecture check sits after the key checks: call the part it lives in directly
    with pytest.raises(UserInputError) as info:
        _ec2_input.check_nested_architecture(params)
    assert info.value.parameter == "architecture"
    _ec2_input.check_nested_architecture(dict(params, architecture="x86_64"))
    _ec2_input.check_nested_architecture(dict(params, nested_virtualization=False))


# -- the launch: two templates, and spot refusing the option ------------------------------


class FakeClient:
    def __init__(self, answers):
        self.answers = {k: list(v) for k, v in answers.items()}
        self.calls = []

    def call(self, operation, what=None, **kwargs):
        self.calls.append((operation, kwargs))
        answer = self.answers[operation].pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def ops(self, name):
        return [kwargs for op, kwargs in self.calls if op == name]


def fleet_error(instance_type, subnet, code, lifecycle="spot"):
    return {
        "LaunchTemplateAndOverrides": {"Overrides": {"InstanceType": instance_type, "SubnetId": subnet}},
        "Lifecycle": lifecycle,
        "ErrorCode": code,
        "ErrorMessage": "refused",
    }


def launched(instance_type, subnet, lifecycle):
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


def nested_candidates():
    candidates = _ec2_fleet.order_candidates(["c8i.2xlarge", "c5.metal"], SUBNETS)
    for c in candidates:
        c["template"] = "nested" if c["instance_type"] == "c8i.2xlarge" else "plain"
    return candidates


def test_fleet_sends_each_candidate_with_its_launch_template() -> None:
    client = FakeClient({"create_fleet": [launched("c8i.2xlarge", "subnet-a", "spot")]})
    fleet = _ec2_fleet.Fleet(client, "price-capacity-optimized", None, {}, {}, warn=lambda msg: None)
    fleet.launch(["spot"], nested_candidates(), {"nested": "lt-nested", "plain": "lt-plain"})
    configs = client.ops("create_fleet")[0]["LaunchTemplateConfigs"]
    by_template = {
        c["LaunchTemplateSpecification"]["LaunchTemplateId"]: [o["InstanceType"] for o in c["Overrides"]]
        for c in configs
    }
    assert by_template == {"lt-nested": ["c8i.2xlarge"] * 2, "lt-plain": ["c5.metal"] * 2}


def test_spot_refusing_the_cpu_option_falls_back_to_on_demand() -> None:
    candidates = [c for c in nested_candidates() if c["template"] == "nested"]
    refusals = [fleet_error(c["instance_type"], c["subnet_id"], "UnsupportedOperation") for c in candidates]
    client = FakeClient(
        {"create_fleet": [{"FleetId": "f1", "Errors": refusals}, launched("c8i.2xlarge", "subnet-a", "on-demand")]}
    )
    warnings = []
    fleet = _ec2_fleet.Fleet(client, "price-capacity-optimized", None, {}, {}, warn=warnings.append)
    fleet.spot_refusal_codes = ("UnsupportedOperation", "InvalidParameterCombination")
    _fleet_id, _iid, lifecycle, candidate = fleet.launch(["spot", "on-demand"], candidates, {"nested": "lt-n"})
    assert (lifecycle, candidate["instance_type"]) == ("on-demand", "c8i.2xlarge")
    assert [e["code"] for e in fleet.candidate_errors] == ["UnsupportedOperation"] * 2
    assert warnings and "falling back to on-demand" in warnings[0]


def test_without_the_option_an_unsupported_operation_fails_at_once() -> None:
    from ansible_collections.nixforge.images.plugins.module_utils._base._errors import ProviderError

    candidates = [c for c in nested_candidates() if c["template"] == "nested"]
    client = FakeClient(
        {
            "create_fleet": [
                {"FleetId": "f1", "Errors": [fleet_error("c8i.2xlarge", "subnet-a", "UnsupportedOperation")]}
            ]
        }
    )
    fleet = _ec2_fleet.Fleet(client, "price-capacity-optimized", None, {}, {}, warn=lambda msg: None)
    with pytest.raises(ProviderError) as info:
        fleet.launch(["spot", "on-demand"], candidates, {"nested": "lt-1"})
    assert info.value.code == "UnsupportedOperation"

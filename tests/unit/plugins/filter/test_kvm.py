"""plugins/filter/kvm.py: which builder types can build a DigitalOcean image (/dev/kvm)."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.nixforge.images.plugins.filter.kvm import FilterModule, kvm_capable, without_kvm


@pytest.mark.parametrize(
    "instance_type",
    ["c5.metal", "m5.metal", "c5n.metal", "c6i.metal", "i3.metal", "c7i.metal-24xl", "m7i.metal-48xl", " C5.METAL "],
)
def test_ec2_bare_metal_types_have_kvm(instance_type: str) -> None:
    assert kvm_capable(instance_type, "ec2") is True


@pytest.mark.parametrize("instance_type", ["c6i.2xlarge", "t3.micro", "m5.large", "c7g.2xlarge", "metal", "c5."])
def test_ec2_virtualised_types_have_none(instance_type: str) -> None:
    assert kvm_capable(instance_type, "ec2") is False


@pytest.mark.parametrize("instance_type", ["c8i.2xlarge", "m8i.4xlarge", "r8i.large", "c8i-flex.2xlarge"])
def test_ec2_nested_virtualisation_types_have_kvm_with_the_cpu_option_only(instance_type: str) -> None:
    """ec2_spot_host asks for the nested virtualisation CPU option (nested_virtualization: true)."""
    assert kvm_capable(instance_type, "ec2") is True
    assert kvm_capable(instance_type, "ec2", nested_virtualization=False) is False


@pytest.mark.parametrize("instance_type", ["c6i.2xlarge", "m6i.2xlarge", "c8g.2xlarge", "c8a.2xlarge", "c8i.metal"])
def test_ec2_nested_virtualisation_is_intel_7th_and_8th_generation_only(instance_type: str) -> None:
    expected = instance_type.endswith(".metal")  # bare metal always; Graviton, AMD, 6th gen never
    assert kvm_capable(instance_type, "ec2") is expected


def test_without_kvm_keeps_the_nested_types_unless_the_option_is_off() -> None:
    types = ["c8i.2xlarge", "c6i.2xlarge", "c5.metal"]
    assert without_kvm(types, "ec2") == ["c6i.2xlarge"]
    assert without_kvm(types, "ec2", nested_virtualization=False) == ["c8i.2xlarge", "c6i.2xlarge"]


def test_metal_plans_are_bare_metal_and_ssh_is_unknown() -> None:
    assert kvm_capable("c3.small.x86", "metal") is True
    assert kvm_capable("anything", "ssh") is None
    assert without_kvm(["anything"], "ssh") == []


def test_without_kvm_keeps_the_refused_types_in_order() -> None:
    assert without_kvm(["c5.metal", "c6i.2xlarge", "m5.metal", "t3.micro"]) == ["c6i.2xlarge", "t3.micro"]
    assert without_kvm("c6i.2xlarge") == ["c6i.2xlarge"]
    assert without_kvm(["c8i.2xlarge"], "ec2") == []
    assert without_kvm([]) == []


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: kvm_capable("c5.metal", "gcp"), "unknown provider"),
        (lambda: kvm_capable("", "ec2"), "expected an instance type"),
        (lambda: kvm_capable(None, "ec2"), "expected an instance type"),
        (lambda: without_kvm({"a": 1}), "expected a list"),
    ],
)
def test_bad_input_is_a_filter_error(call, message: str) -> None:
    with pytest.raises(AnsibleFilterError, match=message):
        call()


def test_registered_names() -> None:
    assert set(FilterModule().filters()) == {"kvm_capable", "without_kvm"}

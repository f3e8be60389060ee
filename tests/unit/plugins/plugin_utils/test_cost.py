"""plugin_utils/_cost.py: the summaries' cost arithmetic (EC2 per-second billing, 60 s
minimum) and the nested-virtualization vs bare-metal comparison at catalogue prices."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.nixforge.images.plugins.filter.builder_cost import builder_cost as cost_filter
from ansible_collections.nixforge.images.plugins.module_utils._ec2._fleet import ON_DEMAND_PRICES, PRICES_AS_OF
from ansible_collections.nixforge.images.plugins.plugin_utils import _cost


@pytest.mark.parametrize(
    ("seconds", "provider", "billed"),
    [
        (0, "ec2", 0),
        (1, "ec2", 60),
        (59.2, "ec2", 60),
        (60, "ec2", 60),
        (61, "ec2", 61),
        (125.1, "ec2", 126),
        (30, "digitalocean", 30),
        (-5, "ec2", 0),
        ("90", "ec2", 90),
        ("", "ec2", 0),
    ],
)
def test_billed_seconds_per_second_with_ec2s_minute(seconds, provider, billed) -> None:
    assert _cost.billed_seconds(seconds, provider) == billed


def test_cost_of_a_short_build_is_the_minute() -> None:
    assert _cost.cost(3.6, 10) == pytest.approx(0.06)  # 60 s at 3.6 USD/h
    assert _cost.cost(3.6, 600) == pytest.approx(0.6)
    assert _cost.cost("", 600) == 0.0


def test_comparison_of_a_nested_builder_names_the_first_metal_candidate() -> None:
    candidates = ["c8i.2xlarge", "m8i.2xlarge", "m5.metal", "c5.metal"]
    compared = _cost.comparison("c8i.2xlarge", 600, candidates)
    assert compared is not None
    assert (compared["nested_type"], compared["metal_type"]) == ("c8i.2xlarge", "m5.metal")
    assert compared["nested_cost"] == pytest.approx(ON_DEMAND_PRICES["c8i.2xlarge"] / 6)
    assert compared["metal_cost"] == pytest.approx(ON_DEMAND_PRICES["m5.metal"] / 6)
    assert compared["saving"] == pytest.approx(compared["metal_cost"] - compared["nested_cost"])
    assert compared["saving"] > 0
    line = compared["line"]
    assert "c8i.2xlarge (nested virtualization)" in line and "m5.metal (bare metal)" in line
    assert PRICES_AS_OF in line and "us-east-1" in line and "600 s billed" in line


def test_comparison_of_a_metal_builder_and_defaults() -> None:
    compared = _cost.comparison("c5.metal", 30, [])
    assert compared is not None and compared["nested_type"] == "c8i.2xlarge"
    assert compared["billed_seconds"] == 60
    assert _cost.comparison("c8i.2xlarge", 30, ["c6i.2xlarge"])["metal_type"] == "c5.metal"
    assert _cost.comparison("c6i.2xlarge", 30, ["c5.metal"]) is None  # no KVM type
    assert _cost.comparison("c8i.24xlarge", 30, []) is None  # not in the catalogue


def test_builder_cost_adds_the_extra_and_compares_ec2_only() -> None:
    builder = {"provider": "ec2", "type": "c8i.2xlarge", "price_per_hour": "0.12"}
    result = _cost.builder_cost(builder, 30, ["c8i.2xlarge", "c5.metal"], extra=0.001)
    assert result["billed_seconds"] == 60 and result["seconds"] == 30
    assert result["cost"] == pytest.approx(0.002)
    assert result["total"] == pytest.approx(0.003)
    assert result["minimum_seconds"] == 60
    assert "c5.metal (bare metal)" in result["comparison_line"]
    metal = _cost.builder_cost({"provider": "metal", "type": "c3.small.x86", "price_per_hour": 0.5}, 30)
    assert metal["billed_seconds"] == 30 and metal["comparison"] is None and metal["comparison_line"] == ""


def test_filter_refuses_what_is_not_a_builder() -> None:
    with pytest.raises(AnsibleFilterError, match="builder_host_result"):
        cost_filter("c8i.2xlarge", 10)
    with pytest.raises(AnsibleFilterError, match="builder_cost"):
        cost_filter({"provider": "ec2", "type": "c8i.2xlarge", "price_per_hour": "cheap"}, 10)

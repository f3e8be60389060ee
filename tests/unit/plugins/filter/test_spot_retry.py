"""The retry decision after a spot interruption (filter spot_retry)."""

from __future__ import annotations

from ansible_collections.nixforge.images.plugins.filter.spot_retry import FilterModule, spot_retry

BUILDER = {
    "type": "a1.2xlarge",
    "provider": "ec2",
    "lifecycle": "spot",
    "availability_zone": "us-east-1a",
    "price_per_hour": 0.36,
    "started_epoch": 1000,
}
NOTICE = {"provider": "ec2", "market": "spot", "notice": '{"action": "terminate"}'}


def test_an_interrupted_build_runs_once_more_on_another_candidate_type() -> None:
    plan = spot_retry(NOTICE, BUILDER, instance_types=["a1.2xlarge", "c7g.2xlarge"], gone_epoch=1100)
    assert plan["retry"] is True and plan["instance_types"] == ["c7g.2xlarge"] and plan["market"] == "spot"
    [earlier] = plan["earlier"]
    assert earlier["seconds"] == 100 and abs(earlier["cost"] - 0.01) < 1e-9
    assert earlier["line"] == "a1.2xlarge (ec2, spot, us-east-1a), interrupted by EC2 (spot), up 100 s, 0.0100 USD"
    # no types given: ec2_spot_host's defaults for the architecture, without the interrupted one
    defaults = spot_retry(NOTICE, BUILDER, gone_epoch=1100)
    assert defaults["retry"] and "a1.2xlarge" not in defaults["instance_types"] and defaults["instance_types"]


def test_one_type_only_goes_on_demand_with_the_fallback_or_tries_the_same_again() -> None:
    on_demand = spot_retry(NOTICE, BUILDER, instance_types=["a1.2xlarge"], on_demand_fallback=True)
    assert on_demand["retry"] and on_demand["market"] == "on-demand" and on_demand["instance_types"] == ["a1.2xlarge"]
    same = spot_retry(NOTICE, BUILDER, instance_types=["a1.2xlarge"])
    assert same["retry"] and same["market"] == "spot" and same["instance_types"] == ["a1.2xlarge"]


def test_no_retry_when_off_not_interrupted_or_already_retried() -> None:
    off = spot_retry(NOTICE, BUILDER, enabled=False)
    assert off["retry"] is False and off["reason"] == "nixforge_spot_retry is off" and len(off["earlier"]) == 1
    assert spot_retry({}, BUILDER)["retry"] is False and spot_retry({}, BUILDER)["earlier"] == []
    again = spot_retry(NOTICE, BUILDER, attempts=[{"line": "x", "cost": 0.1}])
    assert again["retry"] is False and again["reason"] == "already retried once" and len(again["earlier"]) == 2
    assert "spot_retry" in FilterModule().filters()

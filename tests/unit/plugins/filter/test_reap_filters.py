"""reap.yml's filters: the failed items of the removal loops."""

from __future__ import annotations

from ansible_collections.nixforge.images.plugins.filter.reap import FilterModule, reap_failures


def test_reap_failures_lists_failed_items_of_every_loop_shape() -> None:
    registered = {
        "ec2": {
            "results": [
                {"item": [{"build_id": "b1"}, "us-east-2"], "failed": False},
                {"item": [{"build_id": "b2"}, "us-east-2"], "failed": True, "msg": "throttled"},
            ]
        },
        "digitalocean droplets": {"results": [{"item": "b3", "failed": True, "msg": "busy"}]},
        "b2": {"results": [], "skipped": True},  # an empty loop
        "equinix_metal": {"skipped": True, "skip_reason": "Conditional result was False"},
    }
    assert reap_failures(registered) == [
        {"provider": "ec2", "build_id": "b2", "msg": "throttled", "line": "ec2 b2: throttled"},
        {
            "provider": "digitalocean droplets",
            "build_id": "b3",
            "msg": "busy",
            "line": "digitalocean droplets b3: busy",
        },
    ]
    assert reap_failures({}) == []
    assert FilterModule().filters()["reap_failures"] is reap_failures


def test_name_list_reads_lists_and_survey_text() -> None:
    from ansible_collections.nixforge.images.plugins.filter.reap import name_list

    assert name_list("us-east-2, eu-west-1,,us-east-2") == ["us-east-2", "eu-west-1"]
    assert name_list(["b1", "", None, "b2"]) == ["b1", "b2"]
    assert name_list("") == [] and name_list(None) == []

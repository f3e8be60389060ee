"""reap.yml's filters: the failed items of the removal loops."""

from __future__ import annotations

import datetime

from ansible_collections.nixforge.images.plugins.filter.reap import FilterModule, reap_failures, reap_select


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
        "metal": {"skipped": True, "skip_reason": "Conditional result was False"},
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


def _build(build_id: str, expires_at: str, *types: str) -> dict:
    from ansible_collections.nixforge.images.plugins.module_utils._base._discovery import group_builds, resource_record

    tags = {"nixforge-build-id": build_id, "nixforge-expires-at": expires_at}
    now = datetime.datetime(2026, 12, 6, 12, 0, tzinfo=datetime.timezone.utc)
    return group_builds([(tags, resource_record(t, t + "-1")) for t in types], now)[0]


def test_reap_select_judges_a_build_across_providers_and_spares_a_live_builder() -> None:
    """The early reap's flake (issue 17): parts of a build whose own expiry is past are kept
    while a machine of that build, on any provider, is alive and unexpired."""
    now = datetime.datetime(2026, 12, 6, 12, 0, tzinfo=datetime.timezone.utc)
    past, future = "2026-12-06T11:00:00Z", "2026-12-06T13:00:00Z"
    found = {
        "ec2": [_build("live", past, "fleet", "key_pair"), _build("dead", past, "instance", "key_pair")],
        "metal": [_build("live", future, "device")],
        "b2": [_build("dead", past, "file_version")],
    }
    chosen = reap_select(found, now=now)
    assert {p: [b["build_id"] for b in builds] for p, builds in chosen.items()} == {
        "ec2": ["dead"],
        "metal": [],
        "b2": ["dead"],
    }
    assert [r["type"] for r in chosen["ec2"][0]["resources"]] == ["instance", "key_pair"]
    # named: everything of the build, expired or not
    named = reap_select(found, named=True, now=now)
    assert [b["build_id"] for b in named["metal"]] == ["live"]
    assert [b["build_id"] for b in named["ec2"]] == ["live", "dead"]


def test_reap_select_keeps_products_unless_named() -> None:
    now = datetime.datetime(2026, 12, 6, 12, 0, tzinfo=datetime.timezone.utc)
    build = _build("old", "2026-12-01T00:00:00Z", "droplet")
    build["resources"].append({"type": "image", "id": "7", "name": "img", "product": True})
    assert [r["type"] for r in reap_select({"digitalocean": [build]}, now=now)["digitalocean"][0]["resources"]] == [
        "droplet"
    ]
    assert len(reap_select({"digitalocean": [build]}, named=True, now=now)["digitalocean"][0]["resources"]) == 2
    assert "reap_select" in FilterModule().filters()


def test_reap_providers_are_the_named_ones_or_those_with_credentials(tmp_path) -> None:
    from ansible_collections.nixforge.images.plugins.filter.reap import reap_providers

    home = {"HOME": str(tmp_path)}
    assert reap_providers("ec2, b2", environ={}) == ["ec2", "b2"]
    assert reap_providers(None, environ=home) == []
    env = dict(home, DIGITALOCEAN_TOKEN="t", B2_APPLICATION_KEY_ID="k", AWS_PROFILE="p", METAL_AUTH_TOKEN="m")
    assert reap_providers("", environ=env) == ["digitalocean", "ec2"]  # no buckets, no projects
    assert reap_providers("", b2_buckets="b", metal_projects=["p"], environ=env) == [
        "digitalocean",
        "b2",
        "ec2",
        "metal",
    ]
    (tmp_path / ".aws").mkdir()
    (tmp_path / ".aws" / "credentials").write_text("[default]\n")
    assert reap_providers("", environ=home) == ["ec2"]  # the shared credentials file
    assert reap_providers("", b2_buckets=["b"], b2_application_key_id="k", environ={"HOME": "/nonexistent"}) == ["b2"]

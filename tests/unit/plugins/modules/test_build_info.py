"""The four *_build_info modules: options, locations, merging and filters (listers faked)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.nixforge.images.plugins.module_utils._base._discovery import group_builds, resource_record
from ansible_collections.nixforge.images.plugins.modules import (
    b2_build_info,
    do_build_info,
    ec2_build_info,
    metal_build_info,
)

PAST = "2026-01-01T00:00:00Z"
FUTURE = "2099-01-01T00:00:00Z"


class Exit(Exception):
    def __init__(self, kind: str, result: dict[str, Any]) -> None:
        super().__init__(kind)
        self.kind = kind
        self.result = result


@pytest.fixture(autouse=True)
def exits(monkeypatch: pytest.MonkeyPatch) -> None:
    from ansible.module_utils import basic

    def exit_json(self: Any, **kwargs: Any) -> None:
        raise Exit("exit", json.loads(json.dumps(basic.remove_values(kwargs, self.no_log_values))))

    def fail_json(self: Any, msg: str, **kwargs: Any) -> None:
        kwargs["msg"] = msg
        raise Exit("fail", json.loads(json.dumps(basic.remove_values(kwargs, self.no_log_values))))

    monkeypatch.setattr(basic.AnsibleModule, "exit_json", exit_json)
    monkeypatch.setattr(basic.AnsibleModule, "fail_json", fail_json)


def fake_builds(location: str, expires: dict[str, str]) -> list[dict[str, Any]]:
    pairs = [
        (
            {"nixforge-build-id": build, "nixforge-expires-at": when},
            resource_record("key_pair", "%s-%s" % (build, location), location=location),
        )
        for build, when in expires.items()
    ]
    return group_builds(pairs)


def run(module: Any, cls_name: str, args: dict[str, Any], check: bool = False) -> Exit:
    if check:
        args = dict(args, _ansible_check_mode=True)
    with patch_module_args(args):
        with pytest.raises(Exit) as info:
            getattr(module, cls_name)().execute()
    return info.value


def test_ec2_asks_every_region_and_merges_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[str, list[str]]] = []
    per_region = {"us-east-1": {"a": PAST, "b": PAST}, "eu-west-1": {"b": FUTURE}}

    def fake(client: Any, region: str, build_ids: list[str]) -> list[dict[str, Any]]:
        asked.append((region, build_ids))
        return fake_builds(region, per_region[region])

    monkeypatch.setattr(ec2_build_info, "list_builds", fake)
    base = {"regions": ["us-east-1", "eu-west-1"], "access_key": "AKIA", "secret_key": "s3cr3t"}
    result = run(ec2_build_info, "Ec2BuildInfo", base).result
    assert result["changed"] is False
    builds = {b["build_id"]: b for b in result["builds"]}
    # b lives on in eu-west-1: not expired, both its resources listed
    assert builds["a"]["expired"] is True and builds["b"]["expired"] is False
    assert [r["location"] for r in builds["b"]["resources"]] == ["us-east-1", "eu-west-1"]
    assert [r[0] for r in asked] == ["us-east-1", "eu-west-1"]

    expired = run(ec2_build_info, "Ec2BuildInfo", dict(base, expired=True), check=True).result
    assert [b["build_id"] for b in expired["builds"]] == ["a"] and expired["changed"] is False
    run(ec2_build_info, "Ec2BuildInfo", dict(base, build_id="b"))
    assert asked[-1] == ("eu-west-1", ["b"])


def test_ec2_defaults_to_the_provider_region(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []
    monkeypatch.setattr(ec2_build_info, "list_builds", lambda c, region, ids: asked.append(region) or [])
    run(ec2_build_info, "Ec2BuildInfo", {"region": "us-east-2", "access_key": "AKIA", "secret_key": "x"})
    assert asked == ["us-east-2"]


def test_bad_build_id_and_missing_location_name_the_parameter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metal_build_info, "list_builds", lambda *a: [])
    monkeypatch.delenv("METAL_PROJECT_ID", raising=False)
    failed = run(metal_build_info, "MetalBuildInfo", {"auth_token": "t0k3n"})
    assert failed.kind == "fail" and failed.result["parameter"] == "project_ids"
    failed = run(
        metal_build_info, "MetalBuildInfo", {"auth_token": "t0k3n", "project_ids": ["p"], "build_id": "Bad/Id"}
    )
    assert failed.kind == "fail" and failed.result["parameter"] == "build_id"


def test_metal_b2_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metal_build_info, "list_builds", lambda c, project, ids: fake_builds(project, {"m": PAST}))
    result = run(metal_build_info, "MetalBuildInfo", {"auth_token": "t0k3n", "project_id": "p1"}).result
    assert result["builds"][0]["resources"][0]["location"] == "p1"
    assert "t0k3n" not in json.dumps(result)

    class FakeB2:
        authorized = 0

        def authorize(self) -> None:
            FakeB2.authorized += 1

    monkeypatch.setattr(b2_build_info, "b2_client", lambda params: FakeB2())
    monkeypatch.setattr(b2_build_info, "list_builds", lambda c, bucket, ids: fake_builds(bucket, {"f": FUTURE}))
    result = run(b2_build_info, "B2BuildInfo", {"buckets": ["x", "y"], "expired": False}).result
    assert [r["location"] for r in result["builds"][0]["resources"]] == ["x", "y"]
    assert FakeB2.authorized == 1  # one authorization for every bucket

    monkeypatch.setattr(do_build_info, "list_builds", lambda c, ids: fake_builds("nyc3", {"d": PAST}))
    result = run(do_build_info, "DoBuildInfo", {"oauth_token": "dop_v1_x", "expired": True}).result
    assert [b["build_id"] for b in result["builds"]] == ["d"]

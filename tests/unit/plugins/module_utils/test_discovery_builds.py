"""Every resource of ours grouped by build, per provider, with fake clients (pure logic)."""

from __future__ import annotations

import datetime
from typing import Any

from ansible_collections.nixforge.images.plugins.filter import reap
from ansible_collections.nixforge.images.plugins.module_utils._b2 import _discovery as _discovery_b2
from ansible_collections.nixforge.images.plugins.module_utils._base import _discovery
from ansible_collections.nixforge.images.plugins.module_utils._digitalocean import _discovery as _discovery_do
from ansible_collections.nixforge.images.plugins.module_utils._ec2 import _discovery as _discovery_ec2
from ansible_collections.nixforge.images.plugins.module_utils._metal import _discovery as _discovery_metal

NOW = datetime.datetime(2026, 11, 28, 9, 0, tzinfo=datetime.timezone.utc)
FUTURE = "2026-11-28T12:00:00Z"
PAST = "2026-11-28T08:00:00Z"


def tags(build: str, expires: str | None = PAST) -> dict[str, str]:
    out = {"nixforge-build-id": build, "nixforge-pipeline": "p"}
    if expires is not None:
        out["nixforge-expires-at"] = expires
    return out


def ec2_tags(build: str, expires: str | None = PAST) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in tags(build, expires).items()]


def by_id(builds: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {b["build_id"]: b for b in builds}


# -- grouping --------------------------------------------------------------------------


def test_group_builds_takes_the_latest_readable_expiry() -> None:
    res = _discovery.resource_record
    builds = _discovery.group_builds(
        [
            (tags("b", PAST), res("device", "d1")),
            (tags("b", FUTURE), res("device", "d2")),
            (tags("b", "garbage"), res("ssh_key", "k1")),
            ({"nixforge-build-id": "undated"}, res("ssh_key", "k2")),
            ({"Name": "not ours"}, res("ssh_key", "k3")),
        ],
        NOW,
    )
    assert [b["build_id"] for b in builds] == ["b", "undated"]
    live, undated = builds
    assert live["expires_at"] == FUTURE and live["expired"] is False and len(live["resources"]) == 3
    # nothing readable: a leak, expired
    assert undated["expires_at"] is None and undated["expired"] is True


def test_filter_and_merge_builds() -> None:
    res = _discovery.resource_record
    east = _discovery.group_builds([(tags("b", PAST), res("key_pair", "k", location="us-east-1"))], NOW)
    west = _discovery.group_builds([(tags("b", FUTURE), res("key_pair", "k", location="us-west-2"))], NOW)
    merged = _discovery.merge_builds(east, west, now=NOW)
    assert len(merged) == 1 and merged[0]["expired"] is False and len(merged[0]["resources"]) == 2
    assert _discovery.filter_builds(east, expired=True) == east
    assert _discovery.filter_builds(east, expired=False) == []
    assert _discovery.filter_builds(east, build_ids=["other"]) == []


# -- EC2 -------------------------------------------------------------------------------


class FakeEc2:
    def __init__(self, data: dict[str, list[dict[str, Any]]]) -> None:
        self.data = data
        self.asked: dict[str, Any] = {}

    def paginate(self, operation: str, key: str, what: str | None = None, **kwargs: Any) -> list[Any]:
        self.asked[operation] = kwargs.get("Filters")
        if operation == "describe_instances":
            return [{"Instances": self.data.get(operation, [])}]
        return self.data.get(operation, [])

    def call(self, operation: str, what: str | None = None, **kwargs: Any) -> Any:
        self.asked[operation] = kwargs.get("Filters")
        return {"KeyPairs": self.data.get(operation, [])}


def test_ec2_lists_every_resource_type_by_build() -> None:
    client = FakeEc2(
        {
            "describe_fleets": [
                {"FleetId": "fleet-1", "FleetState": "active", "Tags": ec2_tags("old")},
                {"FleetId": "fleet-2", "FleetState": "deleted", "Tags": ec2_tags("old")},
                {"FleetId": "fleet-3", "FleetState": "active", "Tags": []},
            ],
            "describe_spot_instance_requests": [
                {"SpotInstanceRequestId": "sir-1", "State": "open", "Tags": ec2_tags("old")}
            ],
            "describe_instances": [
                {"InstanceId": "i-1", "State": {"Name": "running"}, "Tags": ec2_tags("live", FUTURE)}
            ],
            "describe_launch_templates": [
                {"LaunchTemplateId": "lt-1", "LaunchTemplateName": "nixforge-old-lt", "Tags": ec2_tags("old")}
            ],
            "describe_security_groups": [{"GroupId": "sg-1", "GroupName": "nixforge-old-sg", "Tags": ec2_tags("old")}],
            "describe_volumes": [{"VolumeId": "vol-1", "State": "available", "Tags": ec2_tags("old")}],
            "describe_key_pairs": [{"KeyPairId": "key-1", "KeyName": "nixforge-old", "Tags": ec2_tags("old")}],
        }
    )
    builds = by_id(_discovery_ec2.list_builds(client, "us-east-1", now=NOW))
    assert set(builds) == {"old", "live"}
    old = builds["old"]
    assert old["expired"] is True and old["pipeline"] == "p"
    assert [(r["type"], r["id"], r["name"]) for r in old["resources"]] == [
        ("fleet", "fleet-1", "fleet-1"),
        ("spot_request", "sir-1", "sir-1"),
        ("launch_template", "lt-1", "nixforge-old-lt"),
        ("security_group", "sg-1", "nixforge-old-sg"),
        ("volume", "vol-1", "vol-1"),
        ("key_pair", "key-1", "nixforge-old"),
    ]
    assert all(r["location"] == "us-east-1" and r["product"] is False for r in old["resources"])
    assert builds["live"]["expired"] is False
    # tags are filtered by EC2, not here
    assert {"Name": "tag-key", "Values": ["nixforge-build-id"]} in client.asked["describe_key_pairs"]
    assert _discovery_ec2.list_builds(client, "us-east-1", expired=True, now=NOW) == [old]


def test_ec2_by_build_id_filters_on_that_tag() -> None:
    client = FakeEc2({})
    assert _discovery_ec2.list_builds(client, "eu-west-1", build_ids=["b7"], now=NOW) == []
    assert {"Name": "tag:nixforge-build-id", "Values": ["b7"]} in client.asked["describe_security_groups"]


def test_ec2_spot_host_looks_a_build_up_with_the_reapers_finders() -> None:
    from ansible_collections.nixforge.images.plugins.module_utils._base._identity import BuildIdentity
    from ansible_collections.nixforge.images.plugins.module_utils._ec2._resources import BuildResources

    client = FakeEc2(
        {
            "describe_fleets": [
                {"FleetId": "fleet-1", "FleetState": "active", "Tags": ec2_tags("b1")},
                {"FleetId": "fleet-2", "FleetState": "active", "Tags": ec2_tags("other")},
                {"FleetId": "fleet-3", "FleetState": "deleted_running", "Tags": ec2_tags("b1")},
            ],
            "describe_instances": [{"InstanceId": "i-2", "LaunchTime": "2"}, {"InstanceId": "i-1", "LaunchTime": "1"}],
            "describe_security_groups": [{"GroupId": "sg-1"}],
            "describe_key_pairs": [{"KeyName": "nixforge-b1-ssh"}],
        }
    )
    found = BuildResources(client, BuildIdentity("b1")).find()
    assert [f["FleetId"] for f in found["fleets"]] == ["fleet-1"]
    assert [i["InstanceId"] for i in found["instances"]] == ["i-1", "i-2"]  # oldest first
    assert found["security_groups"] == [{"GroupId": "sg-1"}] and found["launch_templates"] == []
    assert found["key_pairs"] == [{"KeyName": "nixforge-b1-ssh"}] and found["volumes"] == []
    by_build = {"Name": "tag:nixforge-build-id", "Values": ["b1"]}
    for operation in (
        "describe_instances",
        "describe_launch_templates",
        "describe_security_groups",
        "describe_key_pairs",
    ):
        assert by_build in client.asked[operation], operation
    assert "shutting-down" in next(
        f["Values"] for f in client.asked["describe_instances"] if f["Name"] == "instance-state-name"
    )


# -- Metal -----------------------------------------------------------------------------


class FakeMetal:
    def __init__(self, devices: list[dict[str, Any]], keys: list[dict[str, Any]]) -> None:
        self.devices, self.keys = devices, keys

    def paginate(self, path: str, key: str, what: str | None = None, **query: Any) -> list[dict[str, Any]]:
        return self.devices

    def call(self, path: str, what: str | None = None) -> Any:
        assert path == "projects/p1/ssh-keys"
        return {"ssh_keys": self.keys}


def metal_tags(build: str, expires: str | None = PAST) -> list[str]:
    return ["%s=%s" % kv for kv in tags(build, expires).items()]


def test_metal_devices_and_keys_by_build() -> None:
    client = FakeMetal(
        [
            {"id": "d1", "hostname": "h1", "state": "active", "tags": metal_tags("old")},
            {"id": "d2", "hostname": "h2", "state": "deleted", "tags": metal_tags("old")},
            {"id": "d3", "hostname": "h3", "state": "active", "tags": ["someone-else"]},
            {"id": "d4", "hostname": "h4", "state": "active", "tags": metal_tags("live", FUTURE)},
        ],
        [
            {"id": "k1", "label": "nixforge-old-ssh", "tags": metal_tags("old")},
            # found by the label metal_device gives it; its device dates the build
            {"id": "k2", "label": "nixforge-live-ssh", "tags": []},
            {"id": "k3", "label": "laptop", "tags": []},
        ],
    )
    builds = by_id(_discovery_metal.list_builds(client, "p1", now=NOW))
    assert set(builds) == {"old", "live"}
    assert [(r["type"], r["id"]) for r in builds["old"]["resources"]] == [("device", "d1"), ("ssh_key", "k1")]
    assert builds["live"]["expired"] is False and len(builds["live"]["resources"]) == 2
    assert [b["build_id"] for b in _discovery_metal.list_builds(client, "p1", expired=True, now=NOW)] == ["old"]


# -- B2 --------------------------------------------------------------------------------


class FakeB2:
    def __init__(self, versions: list[dict[str, Any]], unfinished: list[dict[str, Any]]) -> None:
        self._versions, self._unfinished = versions, unfinished
        self.prefixes: list[str] = []

    def bucket(self, name: str) -> Any:
        return name

    def versions(self, bucket: Any, prefix: str) -> list[dict[str, Any]]:
        self.prefixes.append(prefix)
        return [v for v in self._versions if v["name"].startswith(prefix)]

    def unfinished(self, bucket: Any, prefix: str) -> list[dict[str, Any]]:
        return [v for v in self._unfinished if v["name"].startswith(prefix)]


def test_b2_versions_and_unfinished_files_by_build() -> None:
    client = FakeB2(
        [
            {"file_id": "f1", "name": "nixforge/old/x/a.img", "action": "upload", "file_info": tags("old")},
            {"file_id": "f2", "name": "nixforge/old/x/a.img", "action": "hide", "file_info": {}},
            {"file_id": "f3", "name": "nixforge/live/x/b.img", "action": "upload", "file_info": tags("live", FUTURE)},
        ],
        [{"file_id": "u1", "name": "nixforge/old/y/big.img", "file_info": tags("old")}],
    )
    builds = by_id(_discovery_b2.list_builds(client, "bkt", now=NOW))
    assert [(r["type"], r["id"]) for r in builds["old"]["resources"]] == [
        ("file_version", "f1"),
        ("hide_marker", "f2"),  # no file info: attributed by its name
        ("unfinished_large_file", "u1"),
    ]
    assert builds["old"]["expired"] is True and builds["live"]["expired"] is False
    assert client.prefixes == ["nixforge/"]
    _discovery_b2.list_builds(client, "bkt", build_ids=["old"], now=NOW)
    assert client.prefixes[-1] == "nixforge/old/"


# -- DigitalOcean ----------------------------------------------------------------------


class FakeDo:
    def __init__(self, images: list[dict[str, Any]], droplets: list[dict[str, Any]]) -> None:
        self.images, self.droplets = images, droplets

    def list_images(self) -> list[dict[str, Any]]:
        return self.images

    def paginate(self, path: str, key: str, what: str, **query: Any) -> list[dict[str, Any]]:
        return self.droplets


def do_tags(build: str, expires: str = PAST) -> list[str]:
    return ["%s:%s" % kv for kv in tags(build, expires).items()]


def test_do_images_available_ones_are_products() -> None:
    client = FakeDo(
        [
            {"id": 1, "name": "stuck", "status": "NEW", "tags": do_tags("old"), "regions": []},
            {"id": 2, "name": "done", "status": "available", "tags": do_tags("old"), "regions": ["nyc3", "ams3"]},
            {"id": 3, "name": "other", "status": "available", "tags": []},
        ],
        [{"id": 9, "name": "builder", "status": "active", "tags": do_tags("old"), "region": {"slug": "nyc3"}}],
    )
    [old] = _discovery_do.list_builds(client, now=NOW)
    assert [(r["type"], r["id"], r["product"]) for r in old["resources"]] == [
        ("image", "1", False),
        ("image", "2", True),
        ("droplet", "9", False),
    ]
    assert old["resources"][1]["location"] == "nyc3,ams3"


# -- the reaper's filters --------------------------------------------------------------


def test_reap_targets_keeps_products_unless_named() -> None:
    client = FakeDo(
        [
            {"id": 1, "name": "stuck", "status": "NEW", "tags": do_tags("old")},
            {"id": 2, "name": "done", "status": "available", "tags": do_tags("old")},
            {"id": 3, "name": "fine", "status": "available", "tags": do_tags("finished")},
        ],
        [{"id": 9, "name": "builder", "status": "active", "tags": do_tags("old")}],
    )
    builds = _discovery_do.list_builds(client, now=NOW)
    kept = reap.reap_targets(builds, types=["image"])
    assert [(b["build_id"], [r["name"] for r in b["resources"]]) for b in kept] == [("old", ["stuck"])]
    everything = reap.reap_targets(builds, keep_products=False)
    assert [len(b["resources"]) for b in everything] == [1, 3]
    assert reap.reap_lines(kept) == ["old: image stuck [1]"]
    assert reap.reap_lines(
        [{"build_id": "b", "resources": [{"type": "key_pair", "id": "k", "name": "k", "location": "r"}]}]
    ) == ["b: key_pair k in r"]

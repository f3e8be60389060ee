"""Discovery of our tagged builders per provider, with fake clients (pure logic)."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from ansible_collections.nixforge.images.plugins.module_utils._base import _discovery
from ansible_collections.nixforge.images.plugins.module_utils._base._errors import ProviderError
from ansible_collections.nixforge.images.plugins.module_utils._digitalocean import _discovery as _discovery_do
from ansible_collections.nixforge.images.plugins.module_utils._digitalocean._client import do_tags
from ansible_collections.nixforge.images.plugins.module_utils._ec2 import _discovery as _discovery_ec2
from ansible_collections.nixforge.images.plugins.module_utils._metal import _discovery as _discovery_metal

NOW = datetime.datetime(2026, 11, 28, 9, 0, tzinfo=datetime.timezone.utc)
FUTURE = "2026-11-28T12:00:00Z"
PAST = "2026-11-28T08:00:00Z"
TOKEN = "dop_v1_s3cr3t0123456789"


def tags(build: str, pipeline: str = "sd-aarch64", expires: str = FUTURE) -> dict[str, str]:
    return {"nixforge-build-id": build, "nixforge-pipeline": pipeline, "nixforge-expires-at": expires}


# -- shared ---------------------------------------------------------------------------


def test_record_expiry_and_address_preference() -> None:
    live = _discovery.builder_record("ec2", "i-1", "n", tags("b1"), now=NOW, private_ipv4="10.0.0.1")
    assert live["expired"] is False and live["address"] == "10.0.0.1"
    gone = _discovery.builder_record(
        "ec2", "i-2", "n", tags("b2", expires=PAST), now=NOW, public_ipv4="1.2.3.4", private_ipv4="10.0.0.2"
    )
    assert gone["expired"] is True and gone["address"] == "1.2.3.4"
    undated = _discovery.builder_record("ec2", "i-3", "n", {"nixforge-build-id": "b3"}, now=NOW)
    assert undated["expired"] is True  # a tagged machine we cannot date is a leak


@pytest.mark.parametrize(
    ("criteria", "expected"),
    [
        ({}, True),
        ({"build_ids": ["b1"]}, True),
        ({"build_ids": ["other"]}, False),
        ({"pipelines": ["sd-aarch64"]}, True),
        ({"pipelines": ["do-image"]}, False),
        ({"expired": False}, True),
        ({"expired": True}, False),
    ],
)
def test_matches(criteria: dict[str, Any], expected: bool) -> None:
    record = _discovery.builder_record("ec2", "i-1", "n", tags("b1"), now=NOW)
    assert _discovery.matches(record, **criteria) is expected


def test_untagged_never_matches() -> None:
    record = _discovery.builder_record("ec2", "i-1", "n", {"Name": "x"}, now=NOW)
    assert _discovery.matches(record) is False


@pytest.mark.parametrize(("given", "nix"), [("arm64", "aarch64"), ("x86_64", "x86_64"), ("amd64", "x86_64")])
def test_architecture_names(given: str, nix: str) -> None:
    assert _discovery.normalize_architecture(given) == nix


# -- EC2 --------------------------------------------------------------------------------


class FakeEc2:
    def __init__(self, instances: list[dict[str, Any]], prices: dict[tuple[str, str], str]) -> None:
        self.instances = instances
        self.prices = prices
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def paginate(self, operation: str, key: str, what: str | None = None, **kwargs: Any) -> list[Any]:
        self.calls.append((operation, kwargs))
        return [{"Instances": self.instances}]

    def call(self, operation: str, what: str | None = None, **kwargs: Any) -> Any:
        self.calls.append((operation, kwargs))
        key = (kwargs["InstanceTypes"][0], kwargs["AvailabilityZone"])
        if key not in self.prices:
            raise ProviderError("no price")
        return {"SpotPriceHistory": [{"AvailabilityZone": key[1], "SpotPrice": self.prices[key], "Timestamp": "1"}]}


def instance(iid: str, build: str, lifecycle: str | None = "spot", expires: str = FUTURE) -> dict[str, Any]:
    data: dict[str, Any] = {
        "InstanceId": iid,
        "InstanceType": "c6g.xlarge",
        "Architecture": "arm64",
        "Placement": {"AvailabilityZone": "us-east-1a"},
        "State": {"Name": "running"},
        "PublicIpAddress": "203.0.113.5",
        "PrivateIpAddress": "10.0.0.5",
        "Tags": [{"Key": k, "Value": v} for k, v in tags(build, expires=expires).items()],
    }
    if lifecycle:
        data["InstanceLifecycle"] = lifecycle
    return data


def test_ec2_filters_on_the_server_side() -> None:
    assert {"Name": "tag-key", "Values": ["nixforge-build-id"]} in _discovery_ec2.instance_filters()
    by_id = _discovery_ec2.instance_filters(["b1", "b2"], ["p"])
    assert {"Name": "tag:nixforge-build-id", "Values": ["b1", "b2"]} in by_id
    assert {"Name": "tag:nixforge-pipeline", "Values": ["p"]} in by_id
    assert {"Name": "instance-state-name", "Values": list(_discovery_ec2.LIVE_STATES)} in by_id


def test_ec2_records_prices_and_expiry() -> None:
    client = FakeEc2(
        [instance("i-1", "b1"), instance("i-2", "b2", None, PAST)], {("c6g.xlarge", "us-east-1a"): "0.0412"}
    )
    records = _discovery_ec2.list_builders(client, "us-east-1", now=NOW)
    first, second = records
    assert first["price_per_hour"] == pytest.approx(0.0412) and first["lifecycle"] == "spot"
    assert first["architecture"] == "aarch64" and first["location"] == "us-east-1" and first["zone"] == "us-east-1a"
    assert first["ssh_user"] == "admin" and first["address"] == "203.0.113.5"
    assert second["price_per_hour"] is None and second["lifecycle"] == "on-demand" and second["expired"] is True
    # one price look-up for the one spot (type, zone) pair
    assert [c[0] for c in client.calls].count("describe_spot_price_history") == 1
    only_live = _discovery_ec2.list_builders(client, "us-east-1", expired=False, now=NOW)
    assert [r["id"] for r in only_live] == ["i-1"]


def test_ec2_missing_price_is_not_fatal() -> None:
    client = FakeEc2([instance("i-1", "b1")], {})
    (record,) = _discovery_ec2.list_builders(client, "us-east-1", now=NOW)
    assert record["price_per_hour"] is None


# -- Metal ------------------------------------------------------------------------------


class FakeMetal:
    def __init__(self, devices: list[dict[str, Any]]) -> None:
        self.devices = devices
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def paginate(self, path: str, key: str, what: str | None = None, **query: Any) -> list[dict[str, Any]]:
        self.calls.append((path, query))
        if "tag" in query:
            return [d for d in self.devices if query["tag"] in d["tags"]]
        return list(self.devices)


def device(did: str, build: str | None, state: str = "active", spot: bool = False) -> dict[str, Any]:
    return {
        "id": did,
        "hostname": "nixforge-%s" % build,
        "state": state,
        "tags": ["%s=%s" % kv for kv in tags(build).items()] if build else ["other"],
        "plan": {"slug": "c3.large.arm64", "pricing": {"hour": 2.5}},
        "metro": {"code": "da"},
        "facility": {"code": "da11"},
        "spot_instance": spot,
        "spot_price_max": 0.9 if spot else None,
        "ip_addresses": [
            {"address": "2001:db8::2", "address_family": 6, "public": True},
            {"address": "10.1.0.3", "address_family": 4, "public": False},
            {"address": "198.51.100.7", "address_family": 4, "public": True},
        ],
    }


def test_metal_lists_ours_only_and_skips_gone_devices() -> None:
    client = FakeMetal([device("d1", "b1"), device("d2", None), device("d3", "b3", state="deprovisioning")])
    records = _discovery_metal.list_builders(client, "proj", now=NOW)
    assert [r["id"] for r in records] == ["d1"]
    (record,) = records
    assert record["address"] == "198.51.100.7" and record["private_ipv4"] == "10.1.0.3"
    assert record["public_ipv6"] == "2001:db8::2" and record["architecture"] == "aarch64"
    assert record["price_per_hour"] == 2.5 and record["location"] == "da" and record["ssh_user"] == "root"
    assert client.calls == [("projects/proj/devices", {})]


def test_metal_by_build_id_asks_the_api_with_the_tag() -> None:
    client = FakeMetal([device("d1", "b1", spot=True), device("d2", "b2")])
    (record,) = _discovery_metal.list_builders(client, "proj", build_ids=["b1"], now=NOW)
    assert client.calls == [("projects/proj/devices", {"tag": "nixforge-build-id=b1"})]
    assert record["lifecycle"] == "spot" and record["price_per_hour"] == 0.9


# -- DigitalOcean -----------------------------------------------------------------------


class FakeClient:
    """What list_builders needs of module_utils/_digitalocean/_client.py's client (paging and retries
    are tested with that client in test_digitalocean.py)."""

    def __init__(self, droplets: list[dict[str, Any]]) -> None:
        self.droplets = droplets
        self.calls: list[dict[str, Any]] = []

    def paginate(self, path: str, key: str, what: str, **query: Any) -> list[dict[str, Any]]:
        self.calls.append({"path": path, "key": key, **query})
        tag = query.get("tag_name")
        return [d for d in self.droplets if tag is None or tag in d.get("tags", [])]


def droplet(did: int, build: str, expires: str = FUTURE) -> dict[str, Any]:
    return {
        "id": did,
        "name": "nixforge-%s" % build,
        "status": "active",
        "tags": [*do_tags(tags(build, "do-image", expires)), "unrelated"],
        "size_slug": "s-2vcpu-4gb",
        "size": {"price_hourly": 0.03571},
        "region": {"slug": "ams3"},
        "networks": {
            "v4": [{"ip_address": "10.2.0.4", "type": "private"}, {"ip_address": "192.0.2.9", "type": "public"}],
            "v6": [],
        },
        "created_at": "2026-11-28T08:30:00Z",
    }


def test_do_records() -> None:
    client = FakeClient([droplet(1, "b1"), droplet(2, "b2", PAST), {"id": 3, "tags": []}])
    records = _discovery_do.list_builders(client, now=NOW)
    assert [x["id"] for x in records] == ["1", "2"]
    first = records[0]
    assert first["address"] == "192.0.2.9" and first["price_per_hour"] == pytest.approx(0.03571)
    assert first["instance_type"] == "s-2vcpu-4gb" and first["location"] == "ams3" and first["pipeline"] == "do-image"
    assert records[1]["expired"] is True
    assert client.calls == [{"path": "droplets", "key": "droplets", "tag_name": None}]


def test_do_by_build_id_uses_the_tag_filter() -> None:
    client = FakeClient([droplet(1, "b1"), droplet(2, "b2")])
    records = _discovery_do.list_builders(client, build_ids=["b1"], now=NOW)
    assert [x["id"] for x in records] == ["1"]
    assert client.calls[0]["tag_name"] == "nixforge-build-id:b1"

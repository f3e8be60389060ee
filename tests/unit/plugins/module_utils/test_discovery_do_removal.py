"""Removing a build's droplets (_digitalocean/_droplets.py: do_droplet, reap.yml), on a fake client."""

from __future__ import annotations

from typing import Any

from ansible_collections.nixforge.images.plugins.module_utils._digitalocean import _droplets


class FakeClient:
    def __init__(self, droplets: list[dict[str, Any]]) -> None:
        self.droplets = droplets
        self.listed: list[Any] = []
        self.deleted: list[str] = []

    def paginate(self, path: str, key: str, what: str, **query: Any) -> list[dict[str, Any]]:
        self.listed.append(query.get("tag_name"))
        tag = query.get("tag_name")
        return [d for d in self.droplets if tag is None or tag in d["tags"]]

    def call(self, path: str, method: str = "GET", what: str = "", missing_ok: bool = False, **kw: Any) -> Any:
        assert method == "DELETE" and missing_ok  # a droplet gone already is no error
        ident = path.split("/")[-1]
        before = len(self.droplets)
        self.droplets = [d for d in self.droplets if str(d["id"]) != ident]
        self.deleted.append(ident)
        return True if len(self.droplets) < before else None


def droplet(ident: int, build_id: str, status: str = "active") -> dict[str, Any]:
    return {"id": ident, "name": "d%d" % ident, "status": status, "tags": ["nixforge-build-id:" + build_id]}


def test_build_droplets_asks_by_tag_and_skips_archived_ones() -> None:
    client = FakeClient([droplet(1, "b1"), droplet(2, "b2"), droplet(3, "b1", status="archive")])
    assert [d["id"] for d in _droplets.build_droplets(client, "b1")] == [1]
    assert client.listed == ["nixforge-build-id:b1"]


def test_delete_and_gone() -> None:
    client = FakeClient([droplet(1, "b1"), droplet(2, "b1")])
    assert not _droplets.droplets_gone(client, "b1", [1])
    assert _droplets.delete_droplet(client, 1) is True
    assert _droplets.delete_droplet(client, 1) is False  # already gone
    assert _droplets.droplets_gone(client, "b1", [1])
    assert not _droplets.droplets_gone(client, "b1", [1, 2])

"""_discovery_metal.ended_devices: which of a build's devices the provider ended, and why."""

from __future__ import annotations

from typing import Any

from ansible_collections.nixforge.images.plugins.module_utils._metal import _discovery as _discovery_metal

D1 = "11111111-1111-1111-1111-111111111111"
D2 = "22222222-2222-2222-2222-222222222222"
D3 = "33333333-3333-3333-3333-333333333333"


def event(device: str, type_: str, at: str, body: str = "") -> dict[str, Any]:
    return {
        "type": type_,
        "body": body or type_,
        "created_at": at,
        "relationships": [{"href": "/metal/v1/devices/%s" % device}],
    }


class FakeEvents:
    """Project events in pages of two, newest first, as the API lists them."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.events = sorted(events, key=lambda e: e["created_at"], reverse=True)
        self.pages: list[int] = []

    def call(self, path: str, params: dict[str, Any], what: str = "", missing_ok: bool = False) -> Any:
        assert path == "projects/p1/events" and missing_ok
        page = params["page"]
        self.pages.append(page)
        last = max(1, (len(self.events) + 1) // 2)
        return {
            "events": self.events[(page - 1) * 2 : page * 2],
            "meta": {"next": {"href": "x"} if page < last else None, "last_page": last},
        }


def test_a_reclaimed_device_gone_from_the_api_is_found_through_the_project_events() -> None:
    client = FakeEvents(
        [
            event(D1, "provisioning.started", "2026-11-28T10:00:00Z"),
            event(D1, "termination.spot_market", "2026-11-28T10:05:00Z", "Device reclaimed"),
            event(D1, "deprovisioning.started", "2026-11-28T10:05:01Z"),
            event(D3, "termination.spot_market", "2026-11-28T10:06:00Z", "someone else's device"),
        ]
    )
    ended = _discovery_metal.ended_devices(client, "p1", [], [D1])
    assert ended == [{"device_id": D1, "code": "termination.spot_market", "message": "Device reclaimed"}]
    assert client.pages == [1, 2]  # followed meta.next


def test_devices_we_deleted_or_still_running_are_not_reported() -> None:
    client = FakeEvents([event(D2, "deprovisioning.started", "2026-11-28T10:00:00Z", "Device deleted through the API")])
    listed = [{"id": D1, "state": "active", "provisioning_events": []}]
    assert _discovery_metal.ended_devices(client, "p1", listed, [D1, D2]) == []
    # nothing that could have ended: the events are not even read
    client = FakeEvents([])
    assert _discovery_metal.ended_devices(client, "p1", listed, []) == []
    assert client.pages == []


def test_a_listed_device_going_away_reports_its_own_newest_end_event() -> None:
    client = FakeEvents([])
    listed = [
        {
            "id": D1,
            "state": "deprovisioning",
            "provisioning_events": [
                event(D1, "termination.time", "2026-11-28T10:00:00Z", "reached its termination_time"),
            ],
        }
    ]
    assert _discovery_metal.ended_devices(client, "p1", listed, [D1]) == [
        {"device_id": D1, "code": "termination.time", "message": "reached its termination_time"}
    ]


def test_an_endpoint_without_events_reports_nothing() -> None:
    class NoEvents:
        def call(self, path: str, params: dict[str, Any], what: str = "", missing_ok: bool = False) -> Any:
            return None  # 404 with missing_ok

    assert _discovery_metal.ended_devices(NoEvents(), "p1", [], [D1]) == []

"""Failure knobs of the sandbox's Equinix Metal: a device reclaimed by the spot market and a
request applied whose answer was lost. packet-python against the running emulator."""

from __future__ import annotations

import time
from typing import Any

import packet
import pytest
from nfsandbox.metal.testing import MetalSandbox

pytestmark = [pytest.mark.sandbox]

BUILD = "metal-fault-test"


@pytest.fixture
def metal(sandbox_instance):
    state, reason = MetalSandbox.state_of(sandbox_instance.instance.number)
    assert state is not None, reason
    sandbox = MetalSandbox(state)
    assert sandbox.metal_resources() == [], "the sandbox was not clean before the test"
    sandbox.set_faults({})
    yield sandbox, sandbox.manager()
    sandbox.set_faults({})
    left = sandbox.metal_resources()
    manager = sandbox.manager()
    for dev in manager.call_api("projects/%s/devices" % sandbox.project_id, params={"per_page": 1000})["devices"]:
        if dev["state"] != "deprovisioning":
            manager.call_api("devices/%s" % dev["id"], "DELETE")
    assert left == [], "the test left Metal resources behind"


def create(sandbox: MetalSandbox, manager: Any) -> dict[str, Any]:
    body = {
        "hostname": "fault",
        "plan": "c3.small.x86",
        "metro": "da",
        "operating_system": "debian_12",
        "billing_cycle": "hourly",
        "tags": ["nixforge-build-id=" + BUILD],
    }
    return manager.call_api("projects/%s/devices" % sandbox.project_id, "POST", body)


def devices(sandbox: MetalSandbox, manager: Any) -> list[dict[str, Any]]:
    return manager.call_api("projects/%s/devices" % sandbox.project_id, params={"per_page": 1000})["devices"]


def wait_gone(sandbox: MetalSandbox, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while sandbox.metal_resources():
        assert time.monotonic() < deadline, sandbox.metal_resources()
        time.sleep(0.25)


def test_a_lost_answer_creates_the_device_all_the_same(metal):
    sandbox, manager = metal
    sandbox.set_faults({"lost_answer": 1, "lost_answer_match": "^POST /projects/[^/]+/devices$"})
    with pytest.raises(packet.Error):
        create(sandbox, manager)
    [dev] = devices(sandbox, manager)
    assert "nixforge-build-id=" + BUILD in dev["tags"]
    assert sandbox.control("GET", "/faults/metal")["faults"]["served"] == {"lost_answer": 1}
    manager.call_api("devices/%s" % dev["id"], "DELETE")
    wait_gone(sandbox)


def test_a_reclaimed_device_is_deprovisioned_with_an_event(metal):
    sandbox, manager = metal
    dev = create(sandbox, manager)
    deadline = time.monotonic() + 120
    while manager.call_api("devices/%s" % dev["id"])["state"] != "active":
        assert time.monotonic() < deadline
        time.sleep(0.25)
    sandbox.set_faults({"reclaim": BUILD, "reclaim_after": 0.5})
    deadline = time.monotonic() + 30
    while True:
        try:
            seen = manager.call_api("devices/%s" % dev["id"])
        except packet.Error:  # deprovisioned: gone from the API
            break
        if seen["state"] == "deprovisioning":
            break
        assert time.monotonic() < deadline, seen["state"]
        time.sleep(0.25)
    assert sandbox.control("GET", "/faults/metal")["faults"]["served"] == {"reclaim": 1}
    wait_gone(sandbox)

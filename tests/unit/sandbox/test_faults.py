"""The fault knobs every emulator shares (nfsandbox/faults.py): validation, replacement,
counter knobs restricted by a regex, seeded draws, and the served counters."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "sandbox"))

from nfsandbox.faults import Knobs, Served


class Demo(Knobs):
    EMULATOR = "demo"
    KEYS = {"throttle": int, "throttle_match": str, "rate": float, "on": bool, "seed": int}
    DEFAULTS = {"throttle": 0, "throttle_match": "", "rate": 0.0, "on": False, "seed": None}
    REGEX_KEYS = ("throttle_match",)
    NON_NEGATIVE = ("throttle",)


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ([], "demo faults must be a JSON object"),
        ({"nope": 1}, r"unknown demo fault knob\(s\) \['nope'\]"),
        ({"rate": "lots"}, "demo fault knob rate must be float, not 'lots'"),
        ({"on": 1}, "demo fault knob on must be true or false"),
        ({"throttle_match": "("}, "demo fault knob throttle_match is not a valid regex"),
        ({"throttle": -1}, "demo fault knob throttle must not be negative"),
    ],
)
def test_bad_knobs_are_refused_naming_them(knobs, message) -> None:
    with pytest.raises(ValueError, match=message):
        Demo().set(knobs)


def test_a_table_replaces_the_last_and_counter_knobs_fire_the_next_matching_requests() -> None:
    faults = Demo()
    faults.set({"throttle": 2, "throttle_match": "^POST ", "on": True})
    assert faults.take("throttle", "GET /x") is False
    assert faults.take("throttle", "POST /x") is True
    assert faults.take("throttle", "POST /y") is True
    assert faults.take("throttle", "POST /z") is False  # used up
    assert faults.snapshot()["served"] == {"throttle": 2}
    faults.set({})
    assert faults.get("on") is False and faults.snapshot()["served"] == {}


def test_draws_are_seeded() -> None:
    faults = Demo()
    faults.set({"seed": 3})
    first = [faults.random.random() for _draw in range(5)]
    faults.set({"seed": 3})
    assert [faults.random.random() for _draw in range(5)] == first


def test_served_survives_a_new_table_only_when_the_emulator_says_so() -> None:
    class Kept(Demo):
        SERVED_SURVIVES_SET = True

    faults = Kept()
    faults.set({"throttle": 1})
    assert faults.take("throttle")
    faults.set({})
    assert faults.snapshot()["served"] == {"throttle": 1}
    faults.reset()
    assert faults.snapshot()["served"] == {}


def test_served_counts_per_kind_and_place_across_threads() -> None:
    served = Served()
    threads = [threading.Thread(target=lambda: [served.count("throttle", "RunInstances") for _count in range(500)])
               for _thread in range(4)]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    served.count("lost_answer", "CreateFleet")
    assert served.snapshot() == {"throttle": {"RunInstances": 2000}, "lost_answer": {"CreateFleet": 1}}
    served.clear()
    assert served.snapshot() == {}

from __future__ import annotations

import pytest
from ansible_collections.nixforge.images.plugins.module_utils._base._errors import UserInputError, WaitTimeout
from ansible_collections.nixforge.images.plugins.module_utils._base._waiter import wait_for


class FakeClock:
    def __init__(self):
        self.now = 0.0
        self.sleeps = []

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def test_returns_state_when_done():
    states = iter(["pending", "pending", "running"])
    fake = FakeClock()
    result = wait_for(
        lambda: next(states), 60, "instance", done=lambda s: s == "running", sleep=fake.sleep, clock=fake.clock
    )
    assert result == "running"
    assert len(fake.sleeps) == 2


def test_backoff_grows_and_is_capped():
    fake = FakeClock()
    with pytest.raises(WaitTimeout):
        wait_for(
            lambda: False,
            100,
            "x",
            interval=2,
            max_interval=5,
            backoff=2,
            first_interval=2,
            sleep=fake.sleep,
            clock=fake.clock,
        )
    assert fake.sleeps[:4] == [2, 4, 5, 5]
    assert abs(sum(fake.sleeps) - 100) < 1e-9  # last pause trimmed to the deadline


def test_first_pauses_are_short_then_double_up_to_the_interval():
    fake = FakeClock()
    with pytest.raises(WaitTimeout):
        wait_for(lambda: False, 60, "x", interval=2, max_interval=5, backoff=2, sleep=fake.sleep, clock=fake.clock)
    assert fake.sleeps[:6] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_zero_interval_never_pauses():
    fake = FakeClock()
    states = iter([False, False, True])
    wait_for(lambda: next(states), 60, "x", interval=0, sleep=fake.sleep, clock=fake.clock)
    assert fake.sleeps == [0.0, 0.0]


def test_timeout_message_names_what_last_state_and_option():
    fake = FakeClock()
    with pytest.raises(WaitTimeout) as info:
        wait_for(
            lambda: {"State": "pending"},
            10,
            "instance i-1 to be running",
            done=lambda s: s["State"] == "running",
            describe=lambda s: s["State"],
            option="wait_timeout",
            sleep=fake.sleep,
            clock=fake.clock,
        )
    exc = info.value
    assert exc.last_state == "pending"
    assert "instance i-1 to be running" in str(exc)
    assert "last observed state: pending" in str(exc)
    assert "'wait_timeout'" in str(exc)


def test_zero_timeout_probes_once():
    fake = FakeClock()
    calls = []
    with pytest.raises(WaitTimeout):
        wait_for(lambda: calls.append(1), 0, "x", sleep=fake.sleep, clock=fake.clock)
    assert len(calls) == 1


def test_probe_errors_stop_waiting():
    def probe():
        raise UserInputError("instance terminated while starting")

    with pytest.raises(UserInputError):
        wait_for(probe, 60, "x", sleep=lambda s: None)


def test_timeout_message_quotes_option_value_and_hint_once():
    fake = FakeClock()
    with pytest.raises(WaitTimeout) as info:
        wait_for(
            lambda: "refused",
            12.5,
            "SSH",
            done=lambda state: False,
            hint="Check 'ssh_cidr'",
            option_value=600,
            sleep=fake.sleep,
            clock=fake.clock,
        )
    text = str(info.value)
    assert "timed out after 12.5s" in text
    assert "(currently 600 seconds)" in text
    assert "Check 'ssh_cidr'. Raise" in text and ".." not in text

from __future__ import annotations

import random

import pytest
from ansible_collections.nixforge.images.plugins.module_utils._base._retry import (
    RetryPolicy,
    backoff_delays,
    call_with_retry,
    find_before_retry,
    is_retryable_http_status,
)


class Throttled(Exception):
    pass


class BadInput(Exception):
    pass


def classify(exc):
    return isinstance(exc, Throttled)


def flaky(failures, exc_type=Throttled):
    calls = {"n": 0}

    def fn(value=None):
        calls["n"] += 1
        if calls["n"] <= failures:
            raise exc_type("fail %d" % calls["n"])
        return value or "ok"

    return fn, calls


def test_retries_until_success_with_sleeps():
    fn, calls = flaky(3)
    sleeps = []
    assert call_with_retry(fn, classify, RetryPolicy(max_attempts=5), value="v", sleep=sleeps.append) == "v"
    assert calls["n"] == 4
    assert len(sleeps) == 3


def test_never_retries_user_errors():
    fn, calls = flaky(1, BadInput)
    sleeps = []
    with pytest.raises(BadInput):
        call_with_retry(fn, classify, RetryPolicy(max_attempts=5), sleep=sleeps.append)
    assert calls["n"] == 1
    assert sleeps == []


def test_gives_up_after_max_attempts_and_reraises_last():
    fn, calls = flaky(10)
    with pytest.raises(Throttled, match="fail 3"):
        call_with_retry(fn, classify, RetryPolicy(max_attempts=3), sleep=lambda s: None)
    assert calls["n"] == 3


def test_total_delay_budget_stops_early():
    fn, calls = flaky(10)
    sleeps = []
    policy = RetryPolicy(max_attempts=50, base_delay=10, max_delay=10, max_total_delay=25)
    with pytest.raises(Throttled):
        call_with_retry(fn, classify, policy, sleep=sleeps.append, rng=random.Random(1))
    assert sum(sleeps) <= 25
    assert calls["n"] < 50


def test_full_jitter_bounds_grow_exponentially_and_cap():
    policy = RetryPolicy(max_attempts=8, base_delay=1, max_delay=8)

    class Max(random.Random):
        def uniform(self, a, b):
            return b

    assert list(backoff_delays(policy, Max())) == [1, 2, 4, 8, 8, 8, 8]
    delays = list(backoff_delays(policy, random.Random(7)))
    assert all(0 <= d <= cap for d, cap in zip(delays, [1, 2, 4, 8, 8, 8, 8]))
    assert len(set(delays)) > 1


def test_on_retry_callback():
    seen = []
    fn, _unused = flaky(2)
    call_with_retry(
        fn, classify, RetryPolicy(max_attempts=4), sleep=lambda s: None, on_retry=lambda a, e, d: seen.append(a)
    )
    assert seen == [1, 2]


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (None, False),
        (200, False),
        (400, False),
        (403, False),
        (404, False),
        (408, True),
        (429, True),
        (500, True),
        (503, True),
        (599, True),
    ],
)
def test_http_status_classification(status, expected):
    assert is_retryable_http_status(status) is expected


def test_policy_validation():
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(base_delay=-1)


def test_ec2_and_metal_clients_share_the_one_cloud_api_policy():
    """The EC2 and Metal clients retry by the policy declared once in retry.py."""
    from ansible_collections.nixforge.images.plugins.module_utils._base import _retry as retry
    from ansible_collections.nixforge.images.plugins.module_utils._ec2 import _client as ec2
    from ansible_collections.nixforge.images.plugins.module_utils._metal import _client as metal

    policy = retry.CLOUD_API_POLICY
    assert (policy.max_attempts, policy.base_delay, policy.max_delay, policy.max_total_delay) == (8, 0.5, 20.0, 90.0)
    assert ec2.AwsClient(object()).policy is policy
    assert metal.MetalClient(object()).policy is policy
    own = RetryPolicy(max_attempts=2)
    assert ec2.AwsClient(object(), policy=own).policy is own
    assert metal.MetalClient(object(), policy=own).policy is own


def test_a_retried_create_first_looks_for_what_the_failed_attempt_made():
    """The first attempt creates; a retry returns what find() sees instead of creating twice."""
    made = []
    seen = {"found": None}
    attempt = find_before_retry(lambda: made.append("x") or {"id": len(made)}, lambda: seen["found"])
    assert attempt() == {"id": 1}
    assert attempt() == {"id": 2}  # nothing found: create again
    seen["found"] = {"id": 1}
    assert attempt() == {"id": 1}
    assert made == ["x", "x"]


def test_the_first_attempt_of_a_create_does_not_look():
    def find():
        raise AssertionError("looked before the first attempt")

    assert find_before_retry(lambda: "made", find)() == "made"


def test_metal_creates_once_when_a_dropped_answer_hid_the_create():
    """MetalClient.create_idempotent: a 503 after the device was made, then the retry finds it."""
    from ansible_collections.nixforge.images.plugins.module_utils._metal import _client as metal

    class Manager:
        posts = 0

        def call_api(self, path, method, params):
            self.posts += 1
            error = metal.PacketError("Error 503: busy")
            error.response = type("R", (), {"status_code": 503, "json": lambda self: {}})()
            raise error

    manager = Manager()
    client = metal.MetalClient(manager, policy=RetryPolicy(max_attempts=3), sleep=lambda s: None)
    device = {"id": "d-1"}
    assert client.create_idempotent("projects/p/devices", {}, lambda: device, "Creating the device") == device
    assert manager.posts == 1 and client.retries == 1

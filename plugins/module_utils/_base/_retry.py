# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to this collection: retries with backoff; no stable interface.
"""Retries with exponential backoff and full jitter.

Each provider module_util supplies a *classifier*: a callable that takes the exception
a call raised and says whether it is worth retrying (throttling, HTTP 429, 5xx,
dropped connections). Anything else, in particular 4xx user errors, is raised at once.

    policy = RetryPolicy(max_attempts=6, max_total_delay=60)
    result = call_with_retry(client.describe_images, is_retryable, policy, Owners=[...])

Full jitter: the n-th sleep is uniform in [0, min(max_delay, base_delay * 2**n)], which
spreads concurrent clients apart better than a fixed or "equal" jitter.
"""

from __future__ import annotations

import random
import time
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, TypeVar

from ansible_collections.nixforge.images.plugins.module_utils._base._errors import NixforgeError, redact

__all__ = [
    "CLOUD_API_POLICY",
    "RetryPolicy",
    "RetryingClient",
    "backoff_delays",
    "call_with_retry",
    "find_before_retry",
    "is_retryable_http_status",
]

T = TypeVar("T")
Classifier = Callable[[BaseException], bool]


class RetryPolicy:
    """How hard to retry.

    ``max_attempts`` counts the first call (1 means no retry). ``max_total_delay`` caps
    the time spent sleeping between attempts: the next attempt is abandoned when its
    sleep would go past the budget.
    """

    def __init__(
        self,
        max_attempts: int = 8,
        base_delay: float = 0.5,
        max_delay: float = 20.0,
        max_total_delay: float = 120.0,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if base_delay < 0 or max_delay < 0 or max_total_delay < 0:
            raise ValueError("delays must not be negative")
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.max_total_delay = max_total_delay

    def __repr__(self) -> str:
        return "RetryPolicy(max_attempts=%d, base_delay=%s, max_delay=%s, max_total_delay=%s)" % (
            self.max_attempts,
            self.base_delay,
            self.max_delay,
            self.max_total_delay,
        )


DEFAULT_POLICY = RetryPolicy()

# The policy of the EC2 and Metal clients (declared once here): a throttled burst gets
# eight tries; 90 s of sleep at most keeps a stuck API from eating the user's wait_timeout.
CLOUD_API_POLICY = RetryPolicy(max_attempts=8, base_delay=0.5, max_delay=20.0, max_total_delay=90.0)


def is_retryable_http_status(status: Optional[int]) -> bool:
    """429 Too Many Requests, 408 Request Timeout and every 5xx are worth retrying."""
    if status is None:
        return False
    return status in (408, 429) or 500 <= status <= 599


def backoff_delays(policy: RetryPolicy, rng: Optional[random.Random] = None) -> Iterator[float]:
    """Yield the sleeps between attempts (``max_attempts - 1`` of them at most)."""
    uniform = (rng or random).uniform
    for attempt in range(policy.max_attempts - 1):
        cap = min(policy.max_delay, policy.base_delay * (2**attempt))
        yield uniform(0, cap)


def call_with_retry(
    fn: Callable[..., T],
    classify: Classifier,
    policy: Optional[RetryPolicy] = None,
    *args: Any,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Optional[Callable[[int, BaseException, float], None]] = None,
    rng: Optional[random.Random] = None,
    **kwargs: Any,
) -> T:
    """Call ``fn(*args, **kwargs)``; retry while ``classify(exc)`` says so.

    ``on_retry(attempt, exc, delay)`` is called before each sleep (for logging or
    counting). The last exception is re-raised unchanged when attempts or the delay
    budget run out, so callers translate it exactly as they would a first failure.
    """
    policy = policy or DEFAULT_POLICY
    delays = backoff_delays(policy, rng)
    slept = 0.0
    attempt = 1
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if not classify(exc):
                raise
            delay = next(delays, None)
            if delay is None or slept + delay > policy.max_total_delay:
                raise
            if on_retry is not None:
                on_retry(attempt, exc, delay)
            sleep(delay)
            slept += delay
            attempt += 1


def find_before_retry(create: Callable[[], T], find: Callable[[], Optional[T]]) -> Callable[[], T]:
    """One attempt of a create, for a retry loop: the first call runs ``create()``; every later
    one first returns what ``find()`` finds. A 5xx or a dropped connection can hide a create
    that succeeded, and creating blindly again would leave a second one behind (a leak)."""
    attempts = [0]

    def attempt() -> T:
        if attempts[0]:
            existing = find()
            if existing is not None:
                return existing
        attempts[0] += 1
        return create()

    return attempt


class RetryingClient:
    """What every provider client shares: its retry policy, the secrets its error
    messages must not show, and a count of the retries it made (reported by modules)."""

    def __init__(
        self,
        policy: RetryPolicy,
        secrets: Iterable[Optional[str]] = (),
        sleep: Optional[Callable[[float], None]] = None,
    ) -> None:
        self.policy = policy
        self.secrets = [s for s in secrets if s]
        self.retries = 0
        self._sleep = sleep

    def _on_retry(self, attempt: int, exc: BaseException, delay: float) -> None:
        self.retries += 1

    def _with_retry(self, fn: Callable[..., T], classify: Classifier, *args: Any, **kwargs: Any) -> T:
        extra: Dict[str, Any] = {"on_retry": self._on_retry}
        if self._sleep is not None:
            extra["sleep"] = self._sleep
        return call_with_retry(fn, classify, self.policy, *args, **extra, **kwargs)

    def _masked(self, error: NixforgeError) -> NixforgeError:
        """``error`` with this client's secrets masked in its message (the last step of every
        client's error translation, before it raises the error ``from None``)."""
        error.msg = redact(error.msg, self.secrets)
        return error

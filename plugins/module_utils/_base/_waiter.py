# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to this collection: polling with a deadline; no stable interface.
"""Polling until something is true, with backoff and a hard deadline.

    state = wait_for(lambda: describe(instance_id)["State"]["Name"],
                     timeout=params["wait_timeout"], what="instance i-123 to be running",
                     done=lambda s: s == "running")

On timeout ``WaitTimeout`` is raised; it names what was awaited, the last observed
state and the option that tunes the timeout. Modules turn it into ``fail_json``.
The probe may raise a ``NixforgeError`` itself to stop waiting early (for example when
an instance went to ``terminated`` while we waited for ``running``).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional, TypeVar

from ansible_collections.nixforge.images.plugins.module_utils._base._errors import WaitTimeout

__all__ = ["WaitTimeout", "wait_for"]

S = TypeVar("S")


def wait_for(
    probe: Callable[[], S],
    timeout: float,
    what: str,
    done: Callable[[S], bool] = bool,
    interval: float = 2.0,
    max_interval: float = 15.0,
    backoff: float = 1.5,
    first_interval: Optional[float] = None,
    option: str = "wait_timeout",
    option_value: Optional[float] = None,
    hint: Optional[str] = None,
    describe: Optional[Callable[[S], Any]] = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> S:
    """Call ``probe()`` until ``done(state)``; return that state.

    The pause between probes starts at ``first_interval`` (default: ``interval``, at most
    0.5 s), doubles up to ``interval`` and then grows by ``backoff`` up to ``max_interval``
    (most waits end within the first seconds, so short early pauses save whole
    intervals for little more than a probe or two); the last pause is shortened so that the final probe happens at the
    deadline. ``option_value`` is quoted in the timeout message as the setting of
    ``option`` (default: ``timeout``). ``describe(state)`` renders the last state for the timeout message
    (default: the state itself). ``timeout <= 0`` probes exactly once.
    """
    deadline = clock() + max(0.0, float(timeout))
    interval = max(0.0, interval)
    pause = max(0.0, min(interval, 0.5) if first_interval is None else first_interval)
    last: Any = None
    while True:
        state = probe()
        if done(state):
            return state
        last = describe(state) if describe is not None else state
        remaining = deadline - clock()
        if remaining <= 0:
            raise WaitTimeout(what, timeout, last_state=last, option=option, hint=hint, option_value=option_value)
        sleep(min(pause, remaining))
        if 0.0 < pause < interval:
            pause = min(interval, pause * 2.0)
        else:
            pause = min(max_interval, pause * backoff) if pause else 0.0

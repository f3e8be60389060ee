"""Fault injection shared by every emulator: a table of typed knobs set through the control
API (`POST /faults/<provider>`), and the counters of what was served (`GET /faults/<provider>`),
with which a test proves that the faults it asked for really fired.

Each emulator declares its knobs on a subclass of :class:`Knobs` (``b2/faults.py``,
``digitalocean/faults.py``, ``metal/faults.py``) and decides there when a fault fires; EC2's
fault *document* (a list of capacity faults and per-action entries, ``ec2/faults.py``) counts
what it served with :class:`Served`. The rules are the same everywhere:

- a table replaces the previous one whole: knobs left out go back to their defaults (``{}``
  clears all); an unknown knob, a value of the wrong type, a rate outside 0..1, a negative
  counter or a regex that does not compile is refused with a ``ValueError`` naming it;
- random draws come from one generator seeded by the ``seed`` knob (reproducible runs);
- counter knobs (``take``) fire the next N matching requests, a ``<knob>_match`` regex on
  the request line restricting them; every fault served is counted.
"""

from __future__ import annotations

import random
import re
import threading
from typing import Any, ClassVar


def check_regex(emulator: str, key: str, pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{emulator} fault knob {key} is not a valid regex: {exc}") from exc


class Served:
    """Thread-safe counters ``{kind: {where: n}}`` (EC2: kind of fault -> action)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[str, dict[str, int]] = {}

    def count(self, kind: str, where: str) -> None:
        with self.lock:
            per = self.counts.setdefault(kind, {})
            per[where] = per.get(where, 0) + 1

    def clear(self) -> None:
        with self.lock:
            self.counts = {}

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self.lock:
            return {kind: dict(per) for kind, per in self.counts.items()}


class Knobs:
    """A table of fault knobs of one emulator. Subclasses set ``EMULATOR`` (the name in
    messages), ``KEYS`` (knob -> type), ``DEFAULTS`` and what to check beyond the type."""

    EMULATOR: ClassVar[str] = ""
    KEYS: ClassVar[dict[str, Any]] = {}
    DEFAULTS: ClassVar[dict[str, Any]] = {}
    REGEX_KEYS: ClassVar[tuple[str, ...]] = ()  # knobs holding a regex
    NON_NEGATIVE: ClassVar[tuple[str, ...]] = ()  # numeric knobs that must be >= 0
    SERVED_SURVIVES_SET: ClassVar[bool] = False  # True: only reset() clears the counters

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values: dict[str, Any] = dict(self.DEFAULTS)
        self.random = random.Random()
        self.served: dict[str, Any] = self.empty_served()

    # -- the table ----------------------------------------------------------------------

    def empty_served(self) -> dict[str, Any]:
        return {}

    @classmethod
    def parse(cls, faults: Any) -> dict[str, Any]:
        """Validated knobs (``ValueError`` names the bad one)."""
        if not isinstance(faults, dict):
            raise ValueError(f"{cls.EMULATOR} faults must be a JSON object")
        unknown = sorted(set(faults) - set(cls.KEYS))
        if unknown:
            raise ValueError(f"unknown {cls.EMULATOR} fault knob(s) {unknown}; known: {sorted(cls.KEYS)}")
        values = dict(cls.DEFAULTS)
        for key, value in faults.items():
            if value is not None:
                values[key] = cls.parse_value(key, value)
        for key in cls.REGEX_KEYS:
            if values[key]:
                check_regex(cls.EMULATOR, key, values[key])
        for key in cls.NON_NEGATIVE:
            if values[key] < 0:
                raise ValueError(f"{cls.EMULATOR} fault knob {key} must not be negative")
        cls.check(values)
        return values

    @classmethod
    def parse_value(cls, key: str, value: Any) -> Any:
        """One knob's value, by its type in ``KEYS`` (a subclass handles its own shapes first)."""
        kind = cls.KEYS[key]
        if kind is dict:
            return value
        if kind is bool and not isinstance(value, bool):
            raise ValueError(f"{cls.EMULATOR} fault knob {key} must be true or false, not {value!r}")
        try:
            return kind(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{cls.EMULATOR} fault knob {key} must be {kind.__name__}, not {value!r}") from exc

    @classmethod
    def check(cls, values: dict[str, Any]) -> None:
        """Checks across knobs, after each has its type (a subclass adds its own)."""

    def set(self, faults: dict[str, Any]) -> None:
        """Replace the whole table; the counters start again (unless ``SERVED_SURVIVES_SET``)."""
        values = self.parse(faults)
        with self.lock:
            self.values = values
            self.random = random.Random(values.get("seed"))
            if not self.SERVED_SURVIVES_SET:
                self.served = self.empty_served()

    def reset(self) -> None:
        """Defaults, unseeded draws and zero counters."""
        with self.lock:
            self.values = dict(self.DEFAULTS)
            self.random = random.Random()
            self.served = self.empty_served()

    def get(self, key: str) -> Any:
        with self.lock:
            return self.values[key]

    # -- firing and counting ---------------------------------------------------------------

    def take(self, key: str, request_line: str | None = None) -> bool:
        """Consume one unit of the counter knob ``key`` (restricted by ``<key>_match`` on the
        request line when both are given); True, and counted, when the fault fires."""
        with self.lock:
            if self.values[key] <= 0:
                return False
            pattern = self.values.get(key + "_match") or ""
            if request_line is not None and pattern and not re.search(pattern, request_line):
                return False
            self.values[key] -= 1
            self.count_locked(key)
            return True

    def count(self, what: str, where: str | None = None) -> None:
        """Count one fault ``what`` served (``where``: the call or route it was served on)."""
        with self.lock:
            self.count_locked(what, where)

    def count_locked(self, what: str, where: str | None = None) -> None:
        self.served[what] = self.served.get(what, 0) + 1
        if where is not None:
            per = self.per_where(where)
            per[what] = per.get(what, 0) + 1

    def per_where(self, where: str) -> dict[str, int]:
        """The counters of one call or route (a subclass that counts them says where)."""
        raise NotImplementedError

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            values = {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.values.items()}
            served = {
                k: ({w: dict(c) for w, c in v.items()} if isinstance(v, dict) else v) for k, v in self.served.items()
            }
            return {**values, "served": served}

"""Fault knobs of the DigitalOcean emulator (control API `POST /faults/digitalocean`).

A call replaces the whole table; `{}` restores the defaults. What was served is counted
by status in `served` (429s of the rate limiter itself as `ratelimited`) and by
"METHOD /v2/path" in `served_by_route` (never reset by a new table, only by `reset()`),
so a test can prove that the faults it asked for really fired: `GET /faults/digitalocean`
on the control API shows the knobs and the counters.

    {"throttle_rate": 0.2,          # fraction of requests answered 429 too_many_requests
     "server_error_rate": 0.1,      # ... 500 server_error
     "unavailable_rate": 0.1,       # ... 503 service_unavailable
     "match": "^POST /v2/images$",  # optional regex on "METHOD /v2/path" limiting the rates
     "routes": {"^GET /v2/actions/": {"throttle_rate": 1.0}},   # per-route rates (first match wins)
     "throttle": 2, "server_error": 1, "unavailable": 1,         # the next N requests, deterministic
     "lost_answer_rate": 0.1, "lost_answer": 1,  # applied, then answered 500 (rate / next N)
     "seed": 7,                     # seeds the random draws (reproducible runs)
     "ratelimit_limit": 5000,       # requests per window (each request counts for one window), ratelimit-limit
     "ratelimit_window": 3600,      # seconds; ratelimit-reset is when the oldest counted request expires
     "ratelimit_burst": 250,        # requests per burst window (DO's 250/minute); past it: 429 + retry-after
     "ratelimit_burst_window": 60,  # seconds
     "import_delay": 1.0,           # minimum seconds an imported image stays NEW
     "transfer_delay": 1.0,         # seconds a transfer action stays in-progress
     "size_limit": 107374182400,    # bytes; larger downloads/decompressed images are refused
     "failed_grace": 600,           # seconds a failed import stays readable (status deleted)
     "refuse_query_urls": true}     # refuse URLs with a query string (DigitalOcean takes the file name
                                    # from the path); false lets a test import a signed URL anyway

Faults apply after the token check (a bad token always gets its 401) and are drawn
before the rate-limit budget is charged. A throttle fault's 429 carries `retry-after: 1`,
as the burst limiter's does (with the seconds until a request expires).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from ..faults import Knobs, check_regex

GIB = 1024**3
KINDS = {"throttle": 429, "server_error": 500, "unavailable": 503}
RATE_KEYS = tuple(f"{k}_rate" for k in KINDS)
ALL_RATE_KEYS = (*RATE_KEYS, "lost_answer_rate")


class DigitalOceanFaults(Knobs):
    EMULATOR = "digitalocean"
    KEYS: ClassVar[dict[str, Any]] = {
        **{k: float for k in ALL_RATE_KEYS},
        **{k: int for k in KINDS},
        "lost_answer": int,
        "match": str,
        "routes": dict,
        "seed": int,
        "ratelimit_limit": int,
        "ratelimit_window": float,
        "ratelimit_burst": int,
        "ratelimit_burst_window": float,
        "import_delay": float,
        "transfer_delay": float,
        "size_limit": int,
        "failed_grace": float,
        "refuse_query_urls": bool,
    }
    DEFAULTS: ClassVar[dict[str, Any]] = {
        **{k: 0.0 for k in ALL_RATE_KEYS},
        **{k: 0 for k in KINDS},
        "lost_answer": 0,
        "match": "",
        "routes": {},
        "seed": None,
        "ratelimit_limit": 5000,
        "ratelimit_window": 3600.0,
        "ratelimit_burst": 250,
        "ratelimit_burst_window": 60.0,
        "import_delay": 1.0,
        "transfer_delay": 1.0,
        "size_limit": 100 * GIB,
        "failed_grace": 600.0,
        "refuse_query_urls": True,
    }
    REGEX_KEYS = ("match",)
    SERVED_SURVIVES_SET = True  # counted until reset(), so a test can change knobs mid-way

    def __init__(self) -> None:
        super().__init__()
        self.served_by_route: dict[str, dict[str, int]] = {}

    @staticmethod
    def _rates(table: Any, where: str) -> dict[str, float]:
        if not isinstance(table, dict):
            raise ValueError(f"{where} must be an object of rates, not {table!r}")
        unknown = sorted(set(table) - set(ALL_RATE_KEYS))
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; known: {list(ALL_RATE_KEYS)}")
        out = {}
        for key, value in table.items():
            try:
                rate = float(value)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{where}.{key} must be a number, not {value!r}") from exc
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{where}.{key} is a fraction of requests: 0..1, not {rate}")
            out[key] = rate
        return out

    @classmethod
    def check(cls, values: dict[str, Any]) -> None:
        values.update(cls._rates({k: values[k] for k in ALL_RATE_KEYS}, "faults"))
        routes: dict[str, dict[str, float]] = {}
        for pattern, table in (values["routes"] or {}).items():
            check_regex(cls.EMULATOR, f"routes key {pattern!r}", pattern)
            routes[pattern] = cls._rates(table, f"routes[{pattern!r}]")
        values["routes"] = routes
        for key in ("ratelimit_limit", "ratelimit_burst", "size_limit"):
            if values[key] < 0:
                raise ValueError(f"{key} must be >= 0")

    def empty_served(self) -> dict[str, Any]:
        return {**{str(s): 0 for s in KINDS.values()}, "lost_answer": 0, "ratelimited": 0}

    def reset(self) -> None:
        super().reset()
        with self.lock:
            self.served_by_route = {}

    def per_where(self, where: str) -> dict[str, int]:
        return self.served_by_route.setdefault(where, {})

    def draw(self, line: str) -> int | None:
        """The status of the fault this request gets ("METHOD /v2/path"), or None."""
        with self.lock:
            status = self._draw_locked(line)
            if status is not None:
                self.count_locked(str(status), line)
            return status

    def draw_lost(self, line: str) -> bool:
        """Whether the answer to this (applied) request is lost: the caller gets a 500."""
        with self.lock:
            v = self.values
            if v["lost_answer"] > 0 and (not v["match"] or re.search(v["match"], line)):
                v["lost_answer"] -= 1
                hit = True
            else:
                rates = self._rates_for(line)
                hit = bool(rates) and self.random.random() < rates.get("lost_answer_rate", 0.0)
            if hit:
                self.count_locked("lost_answer", line)
            return hit

    def count_ratelimited(self, line: str) -> None:
        """A 429 of the rate limiter itself (not a fault knob): counted as `ratelimited`."""
        self.count("ratelimited", line)

    def _rates_for(self, line: str) -> dict[str, float] | None:
        v = self.values
        for pattern, table in v["routes"].items():
            if re.search(pattern, line):
                return table
        if v["match"] and not re.search(v["match"], line):
            return None
        return {k: v[k] for k in ALL_RATE_KEYS}

    def _draw_locked(self, line: str) -> int | None:
        v = self.values
        for kind, status in KINDS.items():  # deterministic counters first
            if v[kind] > 0 and (not v["match"] or re.search(v["match"], line)):
                v[kind] -= 1
                return status
        rates = self._rates_for(line)
        if rates is None:
            return None
        roll = self.random.random()
        for kind, status in KINDS.items():
            rate = rates.get(f"{kind}_rate", 0.0)
            if roll < rate:
                return status
            roll -= rate
        return None

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            by_route = {k: dict(v) for k, v in self.served_by_route.items()}
        return {**super().snapshot(), "served_by_route": by_route}

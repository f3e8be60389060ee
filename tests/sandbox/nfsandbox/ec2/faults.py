"""Fault injection for the sandbox's EC2 (fed by ``POST /faults/ec2`` through ``Provider.set_faults``).

The document replaces the previous one as a whole (``{}`` clears everything)::

    {
      "capacity": [                       # launches that fail for lack of capacity
        {"instance_type": "c6g.2xlarge",  # fnmatch pattern, e.g. "*.metal"; absent = any type
         "availability_zone": "us-east-1a",  # absent = every zone
         "region": "us-east-1",           # absent = every region
         "market": "spot",                # "spot" | "on-demand"; absent = both
         "code": "InsufficientInstanceCapacity",  # the default; or e.g. "MaxSpotInstanceCountExceeded"
         "message": "...",                # optional; default: the AWS wording for the code
         "count": 1}                      # launches it fails before it disarms; absent = until cleared
      ],
      "throttle":     {"count": 3, "code": "RequestLimitExceeded", "actions": ["RunInstances"]},
      "server_error": {"count": 2, "code": "InternalError", "status": 500, "actions": ["CreateFleet"]},
      "delay":        {"seconds": 0.5, "count": 10, "actions": ["DescribeInstances"]},
      "lost_answer":  {"count": 1, "actions": ["CreateFleet"]},
      "spot_interruption": {"build_id": "b1", "after_seconds": 5, "notice_seconds": 120, "count": 1},
      "security_group_hold": {"seconds": 8}
    }

``throttle`` answers the next ``count`` EC2 requests (those whose action is listed in
``actions``, all when absent) with HTTP 503 ``RequestLimitExceeded`` (or ``"code":
"Throttling"``, HTTP 400), ``server_error`` with a 5xx (``InternalError`` 500 by default,
``Unavailable`` 503), ``delay`` sleeps before answering (``count`` absent: every matching
request). Capacity faults make ``RunInstances`` / ``RequestSpotInstances`` fail with
``InsufficientInstanceCapacity`` (HTTP 500, as EC2 sends it, so SDKs retry it before
giving up) and make instant fleets record an ``Errors[]`` entry and move on to the next
candidate.

``lost_answer`` lets moto apply the next ``count`` matching requests and then answers
them with a 500 ``InternalError``, as when the reply is lost on the way back: a client
that retries blindly creates a second resource. ``spot_interruption`` interrupts up to
``count`` (default 1) running spot instances tagged ``nixforge-build-id`` = ``build_id``
(or listed in ``instance_ids``) once they have run ``after_seconds``, as EC2 does: first
the two-minute notice (``notice_seconds``, default 120): the host's metadata answers
``/latest/meta-data/spot/instance-action`` with ``{"action": "terminate", "time": ...}``,
an EventBridge-style "EC2 Spot Instance Interruption Warning" is recorded (``GET
/faults/ec2`` ``events``, cleared with the counters when faults are set), a spot request
is ``marked-for-termination``, ``served.spot_interruption_notice`` counts it and one
``count`` is used up; ``notice_seconds`` later EC2 records
``Server.SpotInstanceTermination`` and the host stops.
``security_group_hold`` keeps the security groups of an instance in use for ``seconds``
after it terminated (``DeleteSecurityGroup`` answers ``DependencyViolation``, as EC2 does
while it releases the instance's network interface); without it the sandbox holds them
``NIXFORGE_SANDBOX_EC2_SG_HOLD_SECONDS`` (default 1 on real hosts). Every such refusal is
counted under ``served.security_group_in_use.DeleteSecurityGroup``.
``GET /faults/ec2`` returns what is still armed and, under ``served``, how many times
each fault fired per action (tests use it to prove that their faults really fired).
"""

from __future__ import annotations

import fnmatch
import threading
from typing import Any

from ..faults import Served

_CAPACITY_KEYS = {"instance_type", "availability_zone", "region", "market", "code", "message", "count"}
_HTTP_KEYS = {
    "throttle": {"count", "code", "status", "message", "actions"},
    "server_error": {"count", "code", "status", "message", "actions"},
    "delay": {"seconds", "count", "actions"},
    "lost_answer": {"count", "actions"},
    "spot_interruption": {"build_id", "instance_ids", "after_seconds", "notice_seconds", "count"},
    "security_group_hold": {"seconds"},
}

THROTTLE_DEFAULTS = {
    "RequestLimitExceeded": (503, "Request limit exceeded."),
    "Throttling": (400, "Rate exceeded"),
}
SERVER_ERROR_DEFAULTS = {
    "InternalError": (500, "An internal error has occurred"),
    "Unavailable": (503, "The server is overloaded and can't handle the request."),
    "ServiceUnavailable": (503, "The request has failed due to a temporary failure of the server."),
}


class FaultError(ValueError):
    """A fault document that does not make sense; the message says which key and why."""


def _count(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FaultError("%s.count must be a non-negative integer or absent, not %r" % (where, value))
    return value


def _actions(value: Any, where: str) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(a, str) and a for a in value):
        raise FaultError("%s.actions must be a list of EC2 action names such as 'RunInstances'" % where)
    return list(value)


class Ec2Faults:
    """The armed faults; thread-safe, counts go down as faults fire. What fired is counted
    per kind and action by the emulators' shared ``Served`` (``nfsandbox/faults.py``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._doc: dict[str, Any] = {}
        self._served = Served()

    # -- configuration ------------------------------------------------------------
    def set(self, doc: dict[str, Any] | None) -> None:
        self.validate(doc or {})
        with self._lock:
            self._doc = _copy(doc or {})
            self._served.clear()

    def clear(self) -> None:
        self.set({})

    def snapshot(self) -> dict[str, Any]:
        """The faults still armed (counts as they are now)."""
        with self._lock:
            out = _copy(self._doc)
            out["served"] = self._served.snapshot()
            return out

    def served(self, kind: str, action: str) -> None:
        """Count one fault of ``kind`` answered for ``action``."""
        self._served.count(kind, action)

    @staticmethod
    def validate(doc: Any) -> None:
        if not isinstance(doc, dict):
            raise FaultError("the EC2 fault document must be a JSON object")
        unknown = set(doc) - {"capacity", *_HTTP_KEYS}
        if unknown:
            raise FaultError(
                "unknown EC2 fault kind(s) %s; known: %s"
                % (", ".join(sorted(unknown)), ", ".join(sorted({"capacity", *_HTTP_KEYS})))
            )
        capacity = doc.get("capacity", [])
        if isinstance(capacity, dict):
            raise FaultError('capacity must be a list of objects, e.g. [{"instance_type": "c6g.2xlarge"}]')
        if not isinstance(capacity, list):
            raise FaultError("capacity must be a list of objects")
        for i, entry in enumerate(capacity):
            where = "capacity[%d]" % i
            if not isinstance(entry, dict):
                raise FaultError("%s must be an object" % where)
            bad = set(entry) - _CAPACITY_KEYS
            if bad:
                raise FaultError("%s: unknown key(s) %s; known: %s" % (where, sorted(bad), sorted(_CAPACITY_KEYS)))
            if entry.get("market") not in (None, "spot", "on-demand"):
                raise FaultError("%s.market must be 'spot' or 'on-demand'" % where)
            _count(entry.get("count"), where)
        for kind in _HTTP_KEYS:
            if kind not in doc:
                continue
            entry = doc[kind]
            if not isinstance(entry, dict):
                raise FaultError("%s must be an object" % kind)
            bad = set(entry) - _HTTP_KEYS[kind]
            if bad:
                raise FaultError("%s: unknown key(s) %s; known: %s" % (kind, sorted(bad), sorted(_HTTP_KEYS[kind])))
            _count(entry.get("count"), kind)
            _actions(entry.get("actions"), kind)
            if kind == "throttle" and entry.get("code", "RequestLimitExceeded") not in THROTTLE_DEFAULTS:
                raise FaultError("throttle.code must be one of %s" % ", ".join(THROTTLE_DEFAULTS))
            if kind == "server_error":
                status = entry.get("status")
                if status is not None and (not isinstance(status, int) or not 500 <= status <= 599):
                    raise FaultError("server_error.status must be an HTTP 5xx status")
                if status is None and entry.get("code", "InternalError") not in SERVER_ERROR_DEFAULTS:
                    raise FaultError(
                        "server_error.code %r has no default status; give server_error.status too" % entry["code"]
                    )
            if kind == "delay":
                seconds = entry.get("seconds")
                if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not 0 <= seconds <= 120:
                    raise FaultError("delay.seconds must be a number between 0 and 120")
            if kind == "security_group_hold":
                seconds = entry.get("seconds")
                if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not 0 <= seconds <= 600:
                    raise FaultError("security_group_hold.seconds must be a number between 0 and 600")
                continue
            if kind == "spot_interruption":
                if not entry.get("build_id") and not entry.get("instance_ids"):
                    raise FaultError("spot_interruption needs build_id or instance_ids")
                continue
            if kind != "delay" and entry.get("count") is None:
                raise FaultError("%s.count is required (how many requests fail)" % kind)

    # -- firing ---------------------------------------------------------------------
    def capacity_error(self, region: str, instance_type: str, zone: str | None, market: str) -> dict[str, Any] | None:
        """The capacity fault that applies to this launch attempt (consuming one count), or None.

        ``zone`` None means the caller did not pick a zone: only faults that name no zone apply.
        """
        with self._lock:
            for entry in self._doc.get("capacity", []):
                if entry.get("count") == 0:
                    continue
                if entry.get("region") not in (None, region):
                    continue
                if entry.get("market") not in (None, market):
                    continue
                if not fnmatch.fnmatchcase(instance_type, entry.get("instance_type") or "*"):
                    continue
                if entry.get("availability_zone") not in (None, zone):
                    continue
                if entry.get("count") is not None:
                    entry["count"] -= 1
                return dict(entry)
        return None

    def http_fault(self, action: str) -> tuple[float, tuple[int, str, str] | None]:
        """For one EC2 request: (seconds to wait, (status, code, message) to answer with or None)."""
        delay = 0.0
        answer = None
        with self._lock:
            entry = self._doc.get("delay")
            if entry and self._fires(entry, action):
                delay = float(entry["seconds"])
            for kind, defaults, default_code in (
                ("throttle", THROTTLE_DEFAULTS, "RequestLimitExceeded"),
                ("server_error", SERVER_ERROR_DEFAULTS, "InternalError"),
            ):
                entry = self._doc.get(kind)
                if answer is None and entry and self._fires(entry, action):
                    code = entry.get("code", default_code)
                    status, message = defaults.get(code, (500, "An internal error has occurred"))
                    answer = (int(entry.get("status") or status), code, entry.get("message") or message)
        if delay:
            self.served("delay", action)
        if answer is not None:
            self.served("throttle" if answer[1] in THROTTLE_DEFAULTS else "server_error", action)
        return delay, answer

    def lose_answer(self, action: str) -> bool:
        """Whether to apply this request but answer it with a 500 (consumes one count)."""
        with self._lock:
            entry = self._doc.get("lost_answer")
            fires = bool(entry) and self._fires(entry, action)
        if fires:
            self.served("lost_answer", action)
        return fires

    def interruption(self) -> dict[str, Any] | None:
        """The armed spot interruption, or None."""
        with self._lock:
            entry = self._doc.get("spot_interruption")
            if not entry or entry.get("count", 1) <= 0:
                return None
            return dict(entry)

    def security_group_hold(self) -> float | None:
        """The armed ``security_group_hold`` in seconds, or None (the sandbox default applies)."""
        with self._lock:
            entry = self._doc.get("security_group_hold")
            return float(entry["seconds"]) if entry else None

    def noticed(self, instance_id: str) -> None:
        """One interruption begun (its notice given): uses up one ``count``."""
        with self._lock:
            entry = self._doc.get("spot_interruption")
            if entry:
                entry["count"] = entry.get("count", 1) - 1
        self.served("spot_interruption_notice", instance_id)

    def interrupted(self, instance_id: str) -> None:
        self.served("spot_interruption", instance_id)

    @staticmethod
    def _fires(entry: dict[str, Any], action: str) -> bool:
        actions = entry.get("actions")
        if actions is not None and action not in actions:
            return False
        count = entry.get("count")
        if count is None:
            return True
        if count <= 0:
            return False
        entry["count"] = count - 1
        return True


def _copy(doc: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, list):
            out[key] = [dict(v) for v in value]
        elif isinstance(value, dict):
            out[key] = {k: (list(v) if isinstance(v, list) else v) for k, v in value.items()}
        else:
            out[key] = value
    return out

"""Fault knobs of the Equinix Metal emulator (control API `POST /faults/metal`, `GET /faults/metal`).

A POST replaces the whole table (knobs left out go back to their defaults, `{}` clears
all) and the served counters start again from zero; the knobs and what each served are in
`MetalFaults.KEYS`. The rules every emulator's knobs follow are in `nfsandbox/faults.py`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ..faults import Knobs


class MetalFaults(Knobs):
    """Fault-injection knobs, settable at run time (see `MetalAPI.set_faults`)."""

    EMULATOR = "metal"
    KEYS: ClassVar[dict[str, Any]] = {
        "fail_provisioning": int,  # the next N devices end in state `failed`
        "throttle": int,  # the next N (matching) requests answer 429
        "throttle_match": str,  # regex on "METHOD /path" restricting `throttle`
        "retry_after": int,  # Retry-After seconds sent with 429 (0: header left out)
        "server_error": int,  # the next N (matching) requests answer a 5xx
        "server_error_status": int,  # which 5xx (default 500)
        "server_error_match": str,  # regex on "METHOD /path" restricting `server_error`
        "provision_delay": float,  # extra seconds every device spends provisioning
        "deprovision_delay": float,  # seconds a deleted device spends deprovisioning
        "lost_answer": int,  # the next N (matching) requests are applied, then answered 500
        "lost_answer_match": str,  # regex on "METHOD /path" restricting `lost_answer`
        "reclaim": str,  # reclaim (spot market) the active device whose tags or id contain this
        "reclaim_after": float,  # ... once it has been active this many seconds
    }
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "fail_provisioning": 0,
        "throttle": 0,
        "throttle_match": "",
        "retry_after": 1,
        "server_error": 0,
        "server_error_status": 500,
        "server_error_match": "",
        "provision_delay": 0.5,
        "deprovision_delay": 0.5,
        "lost_answer": 0,
        "lost_answer_match": "",
        "reclaim": "",
        "reclaim_after": 0.0,
    }

    REGEX_KEYS = ("throttle_match", "server_error_match", "lost_answer_match")

    @classmethod
    def check(cls, values: dict[str, Any]) -> None:
        if not 500 <= values["server_error_status"] <= 599:
            raise ValueError(f"server_error_status must be a 5xx, not {values['server_error_status']}")

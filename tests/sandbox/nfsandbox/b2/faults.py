"""Fault knobs of the B2 emulator (control API `POST /faults/b2`, `GET /faults/b2`).

A POST replaces the whole table; knobs left out go back to their defaults (`{}` clears
all) and the served counters start again from zero.

    {"rate_429": 0.2,             # share of calls answering 429 too_many_requests
     "rate_503": 0.1,             # share of calls answering 503 service_unavailable
     "calls": {"b2_upload_part": {"rate_503": 0.5},      # per call name, replaces the
               "b2_download_file_by_name": {"rate_429": 0, "rate_503": 0}},  # global rates
     "throttle": 2,               # the next N (matching) calls answer 429
     "service_unavailable": 1,    # the next N (matching) calls answer 503
     "match": "^b2_list_",        # regex on the call name restricting the two counters
     "retry_after": 1,            # Retry-After seconds of the 429s and 503s
     "token_ttl": 2.0,            # account and upload tokens expire N s after issue (0: 24 h)
     "upload_rate": 100.0,        # MB/s at most per upload request (0: as fast as it comes)
     "lost_answer": 1,            # the next N (matching) mutating calls: carried out, answered 500
     "lost_answer_match": "^b2_finish_large_file$",   # regex on the call name for lost_answer
     "lost_answer_rate": 0.1,     # share of mutating calls whose answer is lost (also per call
                                  # under "calls": {"b2_upload_part": {"lost_answer_rate": 0.5}})
     "corrupt_upload": 1,         # the next N upload bodies arrive with one byte altered (a
                                  # faulty path): B2 answers 400 "Checksum did not match"
     "seed": 7}                   # random seed of the rates (reproducible runs)

A lost answer is what a client sees when the reply of a call that B2 carried out never
reaches it: the call's effect stays (a finished large file, an uploaded part, a deleted
version, a new key), the client gets a 500 `internal_error` and must find out what
happened (b2sdk retries the call, which B2 may then refuse: a large file finished twice
is "No active upload"). Only the calls that change something lose answers
(`MUTATING_CALLS`); a read has nothing to lose but its answer, which `rate_503` covers.

`upload_rate` is B2's behaviour over a real network rather than a fault: B2 receives each
upload request on one machine, over one TCP path, and one stream gets a fraction of the
link (Backblaze's advice for throughput is more threads). On loopback nothing limits a
stream but the CPU; this knob paces each upload body so that what parallel parts buy can
be measured (benchmarks/b2_upload.py --upload-rate).

Call names are B2's: `b2_authorize_account`, `b2_list_buckets`, ..., `b2_upload_file`,
`b2_upload_part`, `b2_download_file_by_name` (GET/HEAD `/file/...`),
`b2_download_file_by_id`. B2 answers uploads that cannot be taken with 503 (the client
fetches a new upload URL), never 429: a global `rate_429` is served as 503 on
`b2_upload_file`/`b2_upload_part`. A 429 set for an upload call by name under `calls` is
served as asked (to test a client against it).

A 503 on an upload ends that upload URL and its token, as on B2: using them again is
answered 401 `bad_auth_token` and counted as `reused_upload_url` (a client that behaves
asks for a new upload URL, so a test can assert the counter stays 0).

`get_faults()` returns the knobs plus `served`: {"429": n, "503": n,
"expired_auth_token": n, "lost_answer": n, "reused_upload_url": n,
"calls": {"b2_upload_part": {"503": n}, ...}}.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from ..faults import Knobs

UPLOAD_CALLS = ("b2_upload_file", "b2_upload_part")
MUTATING_CALLS = (
    "b2_create_bucket", "b2_update_bucket", "b2_delete_bucket", "b2_upload_file", "b2_upload_part",
    "b2_start_large_file", "b2_finish_large_file", "b2_cancel_large_file", "b2_hide_file",
    "b2_delete_file_version", "b2_create_key", "b2_delete_key",
)  # fmt: skip
RATE_KEYS = ("rate_429", "rate_503", "lost_answer_rate")


def parse_rate(name: str, value: Any) -> float:
    try:
        rate = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"b2 fault knob {name} must be a number 0..1, not {value!r}") from exc
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"b2 fault knob {name} must be within 0..1, not {rate}")
    return rate


class B2Faults(Knobs):
    EMULATOR = "b2"
    KEYS: ClassVar[dict[str, Any]] = {
        "rate_429": float,
        "rate_503": float,
        "calls": dict,
        "throttle": int,
        "service_unavailable": int,
        "match": str,
        "retry_after": int,
        "token_ttl": float,
        "upload_rate": float,
        "lost_answer": int,
        "lost_answer_match": str,
        "lost_answer_rate": float,
        "corrupt_upload": int,
        "seed": int,
    }
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "rate_429": 0.0,
        "rate_503": 0.0,
        "calls": {},
        "throttle": 0,
        "service_unavailable": 0,
        "match": "",
        "retry_after": 1,
        "token_ttl": 0.0,
        "upload_rate": 0.0,
        "lost_answer": 0,
        "lost_answer_match": "",
        "lost_answer_rate": 0.0,
        "corrupt_upload": 0,
        "seed": None,
    }
    REGEX_KEYS = ("match", "lost_answer_match")
    NON_NEGATIVE = (
        "throttle",
        "service_unavailable",
        "retry_after",
        "lost_answer",
        "corrupt_upload",
        "token_ttl",
        "upload_rate",
    )

    def empty_served(self) -> dict[str, Any]:
        return {
            "429": 0,
            "503": 0,
            "expired_auth_token": 0,
            "lost_answer": 0,
            "reused_upload_url": 0,
            "corrupt_upload": 0,
            "calls": {},
        }

    @classmethod
    def parse_value(cls, key: str, value: Any) -> Any:
        if key in RATE_KEYS:
            return parse_rate(key, value)
        if key == "calls":
            return cls._parse_calls(value)
        return super().parse_value(key, value)

    @staticmethod
    def _parse_calls(value: Any) -> dict[str, dict[str, float]]:
        if not isinstance(value, dict):
            raise ValueError("b2 fault knob calls must map call names to {rate_429, rate_503, lost_answer_rate}")
        out: dict[str, dict[str, float]] = {}
        for call, rates in value.items():
            if not isinstance(rates, dict) or set(rates) - set(RATE_KEYS):
                raise ValueError(f"b2 fault knob calls.{call} must be an object with {', '.join(RATE_KEYS)}")
            out[str(call)] = {k: parse_rate(f"calls.{call}.{k}", v) for k, v in rates.items()}
        return out

    def per_where(self, where: str) -> dict[str, int]:
        return self.served["calls"].setdefault(where, {})

    def pick(self, call: str) -> int | None:
        """The status (429 or 503) this call answers with, or None; counts what it serves."""
        with self.lock:
            v = self.values
            status = None
            pattern = v["match"]
            if not pattern or re.search(pattern, call):
                if v["throttle"] > 0:
                    v["throttle"] -= 1
                    status = 429
                elif v["service_unavailable"] > 0:
                    v["service_unavailable"] -= 1
                    status = 503
            if status is None:
                own = v["calls"].get(call)
                if own is not None and not {"rate_429", "rate_503"} & set(own):
                    own = None  # only a lost_answer_rate of its own: the global rates apply
                rates = own if own is not None else {"rate_429": v["rate_429"], "rate_503": v["rate_503"]}
                draw = self.random.random()
                r429, r503 = rates.get("rate_429", 0.0), rates.get("rate_503", 0.0)
                if draw < r429:
                    # B2 tells uploaders to fetch a new URL (503), it does not throttle them
                    status = 503 if own is None and call in UPLOAD_CALLS else 429
                elif draw < r429 + r503:
                    status = 503
            if status is not None:
                self.count_locked(str(status), call)
            return status

    def lost(self, call: str) -> bool:
        """Whether the answer to this (carried out) call is lost; counts what it serves."""
        if call not in MUTATING_CALLS:
            return False
        with self.lock:
            v = self.values
            hit = False
            if v["lost_answer"] > 0 and re.search(v["lost_answer_match"], call):
                v["lost_answer"] -= 1
                hit = True
            else:
                own = v["calls"].get(call) or {}
                rate = own.get("lost_answer_rate", v["lost_answer_rate"])
                hit = bool(rate) and self.random.random() < rate
            if hit:
                self.count_locked("lost_answer", call)
            return hit

    def corrupt(self, call: str) -> bool:
        """Whether this upload body arrives altered (the knob `corrupt_upload`); counts it."""
        with self.lock:
            if call not in UPLOAD_CALLS or self.values["corrupt_upload"] <= 0:
                return False
            self.values["corrupt_upload"] -= 1
            self.count_locked("corrupt_upload", call)
            return True

    def count_expired(self, call: str) -> None:
        self.count("expired_auth_token", call)

    def count_reused(self, call: str) -> None:
        """An upload URL ended by a 503 was used again (B2 refuses it; a good client never does it)."""
        self.count("reused_upload_url", call)

    def token_ttl(self, default: float) -> float:
        with self.lock:
            return self.values["token_ttl"] or default

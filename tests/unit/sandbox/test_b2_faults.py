"""Fault knobs of the B2 emulator: validation, rates, counters, B2's 503-not-429 for uploads."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "sandbox"))

from nfsandbox.b2.faults import B2Faults


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"nope": 1}, "unknown b2 fault knob"),
        ({"rate_429": 1.5}, "within 0..1"),
        ({"rate_503": "lots"}, "number 0..1"),
        ({"calls": {"b2_upload_part": {"rate_5xx": 1}}}, "calls.b2_upload_part"),
        ({"calls": ["b2_upload_part"]}, "calls must map"),
        ({"match": "("}, "not a valid regex"),
        ({"throttle": -1}, "must not be negative"),
        ({"token_ttl": "soon"}, "token_ttl must be float"),
        ({"upload_rate": -5}, "upload_rate must not be negative"),
    ],
)
def test_bad_knobs_are_refused(knobs, message) -> None:
    with pytest.raises(ValueError, match=message):
        B2Faults().set(knobs)


def test_counters_fire_in_order_and_respect_match() -> None:
    faults = B2Faults()
    faults.set({"throttle": 1, "service_unavailable": 1, "match": "^b2_list_"})
    assert faults.pick("b2_get_upload_url") is None
    assert faults.pick("b2_list_buckets") == 429
    assert faults.pick("b2_list_file_names") == 503
    assert faults.pick("b2_list_buckets") is None
    served = faults.snapshot()["served"]
    assert (served["429"], served["503"]) == (1, 1)
    assert served["calls"] == {"b2_list_buckets": {"429": 1}, "b2_list_file_names": {"503": 1}}


def test_rates_are_seeded_and_roughly_right() -> None:
    faults = B2Faults()
    faults.set({"rate_429": 0.2, "rate_503": 0.1, "seed": 11})
    first = [faults.pick("b2_list_buckets") for _index in range(2000)]
    faults.set({"rate_429": 0.2, "rate_503": 0.1, "seed": 11})
    assert [faults.pick("b2_list_buckets") for _index in range(2000)] == first
    assert 300 < first.count(429) < 500 and 120 < first.count(503) < 280


def test_global_429_is_a_503_for_uploads_unless_asked_by_name() -> None:
    faults = B2Faults()
    faults.set({"rate_429": 1.0, "calls": {"b2_upload_file": {"rate_429": 1.0}}})
    assert faults.pick("b2_upload_part") == 503
    assert faults.pick("b2_upload_file") == 429
    assert faults.pick("b2_list_buckets") == 429


def test_per_call_rates_replace_the_global_ones() -> None:
    faults = B2Faults()
    faults.set({"rate_503": 1.0, "calls": {"b2_download_file_by_name": {"rate_503": 0}}})
    assert faults.pick("b2_download_file_by_name") is None
    assert faults.pick("b2_hide_file") == 503


def test_setting_again_clears_counters_and_token_ttl_defaults() -> None:
    faults = B2Faults()
    faults.set({"rate_503": 1.0, "token_ttl": 3})
    faults.pick("b2_list_buckets")
    faults.count_expired("b2_list_buckets")
    assert faults.snapshot()["served"]["expired_auth_token"] == 1
    assert faults.token_ttl(86400) == 3
    faults.set({})
    assert faults.snapshot()["served"] == {
        "429": 0,
        "503": 0,
        "expired_auth_token": 0,
        "lost_answer": 0,
        "reused_upload_url": 0,
        "corrupt_upload": 0,
        "calls": {},
    }
    assert faults.token_ttl(86400) == 86400
    assert faults.pick("b2_list_buckets") is None


def test_corrupt_upload_alters_the_next_upload_bodies_only() -> None:
    faults = B2Faults()
    faults.set({"corrupt_upload": 2})
    assert not faults.corrupt("b2_list_buckets")  # not an upload: nothing to alter, nothing counted
    assert faults.corrupt("b2_upload_part") and faults.corrupt("b2_upload_file")
    assert not faults.corrupt("b2_upload_part")
    served = faults.snapshot()["served"]
    assert served["corrupt_upload"] == 2 and served["calls"]["b2_upload_part"] == {"corrupt_upload": 1}

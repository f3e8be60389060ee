"""Helpers the integration tests share (nfsandbox.testing): what a missing emulator does."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "sandbox"))

from nfsandbox.testing import sandbox_missing


def test_a_missing_emulator_fails_under_make_test_and_skips_otherwise(monkeypatch) -> None:
    monkeypatch.setenv("NIXFORGE_REQUIRE_SANDBOX", "1")
    with pytest.raises(pytest.fail.Exception, match=r"NIXFORGE_REQUIRE_SANDBOX=1 .* no B2 emulator"):
        sandbox_missing("the sandbox has no B2 emulator (failed)")
    monkeypatch.delenv("NIXFORGE_REQUIRE_SANDBOX")
    with pytest.raises(pytest.skip.Exception, match="no B2 emulator"):
        sandbox_missing("the sandbox has no B2 emulator (failed)")


def test_leftovers_of_a_build_include_machines_running_without_their_cloud_record() -> None:
    from nfsandbox.testing import leftovers_of

    records = [
        {"provider": "ec2", "type": "instance", "id": "i-0live", "tags": {"nixforge-build-id": "b1"}},
        {"provider": "sandbox", "type": "host", "id": "h1", "owner": "i-0live"},  # its machine
        {"provider": "sandbox", "type": "host", "id": "h2", "owner": "i-0gone"},  # instance gone, host runs on
        {"provider": "sandbox", "type": "host", "id": "h3", "owner": "metal:dead-beef"},  # device gone
        {"provider": "metal", "type": "device", "id": "d-other", "tags": ["nixforge-build-id:b2"]},
        {"provider": "sandbox", "type": "host", "id": "h4", "owner": "metal:d-other"},  # another build's
        {"provider": "sandbox", "type": "host", "id": "h5", "owner": "pytest"},  # a test's own host
    ]
    assert [r["id"] for r in leftovers_of(records, "b1")] == ["i-0live", "h1", "h2", "h3"]
    assert [r["id"] for r in leftovers_of(records, "b2")] == ["d-other", "h2", "h3", "h4"]
    assert leftovers_of(records[4:], "b9") == []

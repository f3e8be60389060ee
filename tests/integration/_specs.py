"""Where the contract tests find the providers' OpenAPI documents (`../shared/specs/`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


def find_spec(name: str) -> Path:
    """`shared/specs/<name>` next to the checkout or next to a folder above it (git worktrees
    kept in a subfolder); NIXFORGE_SPECS_DIR overrides."""
    if os.environ.get("NIXFORGE_SPECS_DIR"):
        return Path(os.environ["NIXFORGE_SPECS_DIR"]) / name
    for parent in REPO.parents:
        candidate = parent / "shared" / "specs" / name
        if candidate.exists():
            return candidate
    return REPO.parent / "shared" / "specs" / name


def require_spec(path: Path) -> None:
    """Skip, saying where the document was looked for, when it is not there; under CI
    (`CI` set) fail instead: a contract check that silently did not run proves nothing."""
    if not path.exists():
        reason = (
            f"contract spec {path.name} not found (looked for shared/specs/{path.name} beside the checkout "
            f"and the folders above it, last {path}); put ../shared/ beside the checkout or set "
            "NIXFORGE_SPECS_DIR to the folder holding it"
        )
        if os.environ.get("CI"):
            pytest.fail(reason + " (CI is set: the contract tests must run)", pytrace=False)
        pytest.skip(reason)


def recorded(state: dict[str, Any], provider: str, agent: str) -> list[dict[str, Any]]:
    """Every exchange the instance's `provider` emulator answered since it started (its
    append-only log, `<state dir>/exchanges/<provider>.jsonl`) whose User-Agent contains
    `agent`: the requests of the collection's own modules, from every test run on it."""
    log = Path(state["state_dir"]) / "exchanges" / f"{provider}.jsonl"
    assert log.exists(), f"the {provider} emulator keeps no exchange log at {log}"
    out = []
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        headers = {k.lower(): v for k, v in entry["request_headers"].items()}
        if agent in headers.get("user-agent", ""):
            out.append(entry)
    return out

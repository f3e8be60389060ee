"""Where the contract tests find the providers' OpenAPI documents (`../shared/specs/`)."""

from __future__ import annotations

import os
from pathlib import Path

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
    """Skip, saying where the document was looked for, when it is not there."""
    if not path.exists():
        pytest.skip(
            f"contract spec {path.name} not found (looked for shared/specs/{path.name} beside the checkout "
            f"and the folders above it, last {path}); put ../shared/ beside the checkout or set "
            "NIXFORGE_SPECS_DIR to the folder holding it"
        )

"""The version matrix's end-to-end tests (make test-matrix): they drive the ansible-core in
NIXFORGE_ANSIBLE_BIN (.build/matrix/VERSION/bin for 2.20/2.21, the project's .venv/bin for
2.19) and need the sandbox instance NIXFORGE_SANDBOX_INSTANCE up (brought up here if it is
not, and down at the end only then)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "sandbox"))
sys.path.insert(0, str(ROOT / "tests" / "integration"))
SANDBOXCTL = ROOT / "tests" / "sandbox" / "sandboxctl"


def ansible_bin() -> Path:
    return Path(os.environ.get("NIXFORGE_ANSIBLE_BIN") or ROOT / ".venv" / "bin")


@pytest.fixture(scope="session")
def sandbox_up() -> Iterator[None]:
    up = subprocess.run([str(SANDBOXCTL), "env"], capture_output=True, check=False).returncode == 0
    if not up:
        subprocess.run([str(SANDBOXCTL), "up"], check=True)
    yield
    if not up:
        subprocess.run([str(SANDBOXCTL), "down"], check=True)

"""The static checks and the reduced version matrix, as tests, so that `make test` runs them
beside the unit and integration tests (pytest-xdist fills the CPU that sandbox tests leave
idle while they wait for emulated clouds) and its last line stays pytest's summary.

Each test runs one target of the Makefile exactly as a developer runs it by hand (`make
lint`, `make sanity`, `make test-matrix-reduced` are the same commands), and fails with the
tail of that target's output.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Slow first (the scheduler starts them early), each on a worker of its own.
pytestmark = [pytest.mark.slow, pytest.mark.spread, pytest.mark.timeout(2400)]


def run_target(target: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS", "PYTEST_"))}
    proc = subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), target],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, f"make {target} failed (exit {proc.returncode}):\n{proc.stdout[-12000:]}"


@pytest.mark.parametrize("target", ["ruff", "ansible-lint", "changelog-lint", "docs-lint"])
def test_lint(target: str) -> None:
    run_target(target)


def test_ansible_test_sanity() -> None:
    run_target("sanity")


def test_reduced_version_matrix() -> None:
    """ansible-core 2.21 under the project's own Python 3.13 root: one pipeline end to end
    from the installed collection (tests/matrix/run.py), on this worker's sandbox instance."""
    run_target("test-matrix-reduced")

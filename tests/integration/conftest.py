"""Fixtures shared by all integration tests: the sandbox cloud.

- `sandbox_instance` (session): brings the sandbox instance from NIXFORGE_SANDBOX_INSTANCE
  (default 0) up if it is not, and down at the end only if this session started it.
  Every test marked `sandbox` gets it automatically; `sandbox` is the same object for
  tests that want to call it (a test module may override `sandbox` with its own).
- `env`: the variables `sandboxctl env` exports (read once per session, a copy per test).

Helpers (SandboxHandle, write_inventory, run_playbook, ansible_env, ssh_keypair, ...) are
in tests/sandbox/nfsandbox/testing.py: import them with `from nfsandbox.testing import
...` (importing from `conftest` breaks when tests/unit runs in the same pytest run).
Tests skip, saying why, when the machine cannot run the sandbox (not root, missing
system packages or virtualenv); nothing here skips unconditionally.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sandbox"))

from _pipeline import sandbox_env
from nfsandbox import client, testing
from nfsandbox.config import instance_from_env
from nfsandbox.testing import (
    SandboxHandle,
    sandbox_missing,
    sandbox_unavailable,
    sandboxctl,
)

ROOT = Path(__file__).resolve().parents[2]
DURATIONS = Path(__file__).with_name("durations.json")

# the emulators' fixtures, for every test module
do_sandbox, ec2_sandbox, metal_sandbox = testing.do_sandbox, testing.ec2_sandbox, testing.metal_sandbox


def pytest_configure(config: pytest.Config) -> None:
    # Under pytest-xdist each worker gets a sandbox instance of its own (base + worker
    # number), set in the environment so that every subprocess (sandboxctl, ansible) sees it.
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker.startswith("gw") and not os.environ.get("NIXFORGE_SANDBOX_WORKER_INSTANCE"):
        base = int(os.environ.get("NIXFORGE_SANDBOX_INSTANCE", "0"))
        os.environ["NIXFORGE_SANDBOX_INSTANCE"] = str(base + int(worker[2:]))
        os.environ["NIXFORGE_SANDBOX_WORKER_INSTANCE"] = "1"


def _grouped(config: pytest.Config) -> bool:
    # xdist's workers, which collect, see --dist as "no" and loadgroup as True
    return bool(getattr(config.option, "loadgroup", False) or getattr(config.option, "dist", "no") == "loadgroup")


def pytest_itemcollected(item: pytest.Item) -> None:
    """Keep every module on one worker (its module fixtures are built once), except the
    whole-pipeline tests marked `spread`. Marked as each item is collected, before xdist's
    own pytest_collection_modifyitems turns the groups into node ids."""
    if _grouped(item.config) and item.get_closest_marker("spread") is None:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Hand out the longest work first, so that no worker is left alone with it at the end
    (longest processing time first): the static checks (sanity is the longest single test),
    then each scope (a module kept on one worker, or one spread test) by the seconds its tests
    took in a measured run (durations.json, scripts/test-durations.py; a test not measured yet
    counts a minute), the unit tests last. The Makefile passes --no-loadscope-reorder, without
    which xdist would order the scopes by their number of tests instead."""
    if not _grouped(config):
        return
    measured = json.loads(DURATIONS.read_text()) if DURATIONS.is_file() else {}
    seconds: Counter[str] = Counter()
    for item in items:
        if not item.nodeid.startswith("tests/unit/"):
            seconds[_scope(item)] += measured.get(item.nodeid.split("@", 1)[0], 60)
    items.sort(
        key=lambda item: (
            not item.nodeid.startswith("tests/checks/"),
            item.nodeid.startswith("tests/unit/"),
            -seconds[_scope(item)],
        )
    )


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node: object, ids: list[str]) -> None:
    """Stop at once when xdist no longer groups (it did not with pytest 9.2: every test of a
    module then ran on any worker, and each of them built the module's fixtures again)."""
    config = getattr(node, "config", None)
    if config is None or not _grouped(config):  # -n without --dist loadgroup asks for no groups
        return
    lost = [
        nodeid
        for nodeid in ids
        if nodeid.startswith("tests/integration/") and "@" not in nodeid and not _spread(nodeid.split("::")[0])
    ]
    if lost:
        raise pytest.UsageError(
            "pytest-xdist ignored the xdist_group of %d tests (%s has no @<group>): install the "
            "pytest that tests/requirements.txt asks for" % (len(lost), lost[0])
        )


@functools.lru_cache(maxsize=None)
def _spread(module: str) -> bool:
    """Whether a test module is marked `spread` (always module-wide: pytestmark)."""
    return "pytest.mark.spread" in (ROOT / module).read_text()


def _scope(item: pytest.Item) -> str:
    """The unit xdist schedules: the item's group, or the item itself (a spread test)."""
    group = item.get_closest_marker("xdist_group")
    return str(group.args[0]) if group and group.args else item.nodeid


@pytest.fixture(scope="session")
def sandbox_instance() -> SandboxHandle:
    reason = sandbox_unavailable()
    if reason:
        sandbox_missing(reason)  # fails under `make test`, which promises the integration tests ran
    inst = instance_from_env()
    state = client.read_state(inst)
    already = bool(client.daemon_alive(inst) and state and state.get("status") == "ready")
    if not already:
        sandboxctl("up", instance=inst.number)
    handle = SandboxHandle(inst, started_here=not already)
    yield handle
    if handle.started_here:
        sandboxctl("down", instance=inst.number)


@pytest.fixture(scope="session")
def _sandbox_variables(sandbox_instance: SandboxHandle) -> dict[str, str]:
    out = sandbox_env()
    assert out is not None, "sandboxctl env failed although the sandbox is up"
    return out


@pytest.fixture
def env(_sandbox_variables: dict[str, str]) -> dict[str, str]:
    """The variables `sandboxctl env` exports (a copy a test may change)."""
    return dict(_sandbox_variables)


@pytest.fixture
def sandbox(sandbox_instance: SandboxHandle) -> SandboxHandle:
    return sandbox_instance


@pytest.fixture(autouse=True)
def _sandbox_for_marked_tests(request: pytest.FixtureRequest) -> None:
    # a test marked `sandbox` finds the sandbox up (or is skipped with the reason)
    if request.node.get_closest_marker("sandbox") is not None:
        request.getfixturevalue("sandbox_instance")

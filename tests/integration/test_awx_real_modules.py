"""playbooks/awx_configure.yml against the real awx.awx modules (from the community `ansible`
package, installed by `make collection`): every awx.awx task runs, each against a controller
address on loopback where nothing answers, and each must fail at the connection, i.e. after
the module accepted its arguments. An argument the module does not know, a wrong type or a
missing required option fails before any connection is tried and turns this test red.

The ansible-core under test is the one in NIXFORGE_ANSIBLE_BIN (the matrix sets it), else
the project's virtualenv.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from nfsandbox.testing import ansible_playbook

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOK = ROOT / "playbooks" / "awx_configure.yml"
AWX = ROOT / ".build" / "collections" / "ansible_collections" / "awx" / "awx"
BIN = Path(os.environ.get("NIXFORGE_ANSIBLE_BIN") or ROOT / ".venv" / "bin")
RECORDER = ROOT / "tests" / "integration" / "callback_plugins"
# What awx.awx's controller_api says when the connection itself fails (URLError/refused).
CONNECTION_FAILED = ("Connection refused", "Failed to connect", "Errno 111")
ARGUMENT_ERRORS = ("Unsupported parameters", "missing required", "is of type", "must be one of", "mutually exclusive")


@pytest.fixture(scope="module")
def dead_endpoint() -> Iterator[str]:
    """A loopback port that is ours (bound, so nobody else takes it) and never listens:
    every connection is refused at once."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    yield f"https://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


def awx_tasks(play: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for t in play["tasks"] if any(k.startswith("awx.awx.") for k in t)]


def keep_going(tmp: Path) -> Path:
    """The playbook with every awx.awx task allowed to fail, so that all of them run."""
    plays = yaml.safe_load(PLAYBOOK.read_text())
    for play in plays:
        for task in awx_tasks(play):
            task["ignore_errors"] = True
    path = tmp / "awx_configure.yml"
    path.write_text(yaml.safe_dump(plays, sort_keys=False))
    return path


def run(playbook: Path, endpoint: str, tmp: Path) -> list[dict[str, Any]]:
    record = tmp / "record.jsonl"
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_COLLECTIONS_PATH": str(ROOT / ".build" / "collections"),
        "ANSIBLE_HOME": str(tmp / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible-home" / "tmp"),
        "ANSIBLE_CALLBACK_PLUGINS": str(RECORDER),
        "ANSIBLE_CALLBACKS_ENABLED": "nixforge_record",
        "NIXFORGE_RECORD_FILE": str(record),
        "CONTROLLER_HOST": endpoint,
        "CONTROLLER_OAUTH_TOKEN": "not-a-real-token",
        "CONTROLLER_VERIFY_SSL": "false",
    }
    extra = {
        "awx_dir": str(ROOT / "awx"),
        # the modules run under the controller's own Python, as in AWX
        "ansible_python_interpreter": "{{ ansible_playbook_python }}",
        "nixforge_awx_scm_url": "https://git.example.invalid/nixforge.git",
        "nixforge_awx_credentials": {"aws": "aws", "digitalocean": "do", "b2": "b2", "metal": "metal"},
    }
    proc = ansible_playbook(["-i", "localhost,", str(playbook), "-e", json.dumps(extra)], env, cwd=tmp, bin_dir=BIN)
    assert "ERROR!" not in proc.stdout + proc.stderr, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert record.exists(), proc.stdout[-4000:] + proc.stderr[-4000:]
    return [json.loads(line) for line in record.read_text().splitlines()]


def item_results(result: dict[str, Any]) -> list[dict[str, Any]]:
    return result.get("results") or [result]


def test_awx_collection_is_the_real_one() -> None:
    manifest = json.loads((AWX / "MANIFEST.json").read_text())
    assert manifest["collection_info"]["namespace"] == "awx"
    modules = {
        m.split(".", 2)[2]
        for t in awx_tasks(yaml.safe_load(PLAYBOOK.read_text())[0])
        for m in t
        if m.startswith("awx.awx.")
    }
    assert modules and all((AWX / "plugins" / "modules" / f"{m}.py").exists() for m in modules)


def test_every_awx_task_fails_at_the_connection(dead_endpoint: str, tmp_path: Path) -> None:
    records = run(keep_going(tmp_path), dead_endpoint, tmp_path)
    names = [t["name"] for t in awx_tasks(yaml.safe_load(PLAYBOOK.read_text())[0])]
    assert len(names) >= 7
    for name in names:
        mine = [r for r in records if r["task"] == name]
        assert len(mine) == 1, f"{name}: {[(r['task'], r['status']) for r in records]}"
        assert mine[0]["status"] == "ignored", f"{name} did not fail: {mine[0]}"
        items = item_results(mine[0]["result"])
        assert items, name
        for item in items:
            msg = str(item.get("msg", ""))
            assert not any(e in msg for e in ARGUMENT_ERRORS), f"{name}: the module refused its arguments: {msg}"
            assert any(c in msg for c in CONNECTION_FAILED), f"{name}: did not fail at the connection: {msg}"

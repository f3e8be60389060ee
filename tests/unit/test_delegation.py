"""A task that a localhost play delegates to the builder must not end the playbook when the
builder stops answering: Ansible marks the *delegating* host (localhost) unreachable, which
no rescue catches and which skips every later play, the teardown included, leaving a paid
machine running. Such tasks carry `ignore_unreachable: true` and check the result."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import yaml

ROOT = Path(__file__).resolve().parents[2]
# action plugins that run on the controller and turn SSH failures into failed results
SAFE_MODULES = {"nixforge.images.wait_for_builder"}
INCLUDES = {"ansible.builtin.include_tasks", "ansible.builtin.include_role", "ansible.builtin.import_tasks"}


def tasks_in(node: Any) -> Iterator[dict[str, Any]]:
    """Every task dict of a task list or play list, blocks and their rescue/always included."""
    if isinstance(node, list):
        for item in node:
            yield from tasks_in(item)
    elif isinstance(node, dict):
        if "hosts" in node:  # a play
            for key in ("pre_tasks", "tasks", "post_tasks", "handlers"):
                yield from tasks_in(node.get(key) or [])
            return
        yield node
        for key in ("block", "rescue", "always"):
            yield from tasks_in(node.get(key) or [])


def unsafe_delegations(text: str) -> list[str]:
    out = []
    for task in tasks_in(yaml.safe_load(text) or []):
        target = str(task.get("delegate_to", "localhost")).strip()
        if target in ("localhost", "127.0.0.1") or task.get("ignore_unreachable") is True:
            continue
        if set(task) & (SAFE_MODULES | INCLUDES) or "block" in task:
            continue  # the included or contained tasks are checked where they are written
        out.append(str(task.get("name")))
    return out


def yaml_files() -> list[Path]:
    return sorted([*ROOT.glob("roles/*/tasks/*.yml"), *ROOT.glob("playbooks/**/*.yml")])


def test_delegated_tasks_survive_a_builder_that_stops_answering() -> None:
    found = {str(p.relative_to(ROOT)): unsafe_delegations(p.read_text()) for p in yaml_files()}
    assert {k: v for k, v in found.items() if v} == {}


def test_the_check_sees_an_unprotected_delegation() -> None:
    assert len(yaml_files()) > 30
    text = """
- name: P
  hosts: localhost
  tasks:
    - name: Outer
      block:
        - name: Stat on the builder
          ansible.builtin.stat: {path: /dev/kvm}
          delegate_to: "{{ builder }}"
        - name: Protected
          ansible.builtin.stat: {path: /dev/kvm}
          delegate_to: "{{ builder }}"
          ignore_unreachable: true
"""
    assert unsafe_delegations(text) == ["Stat on the builder"]

"""Logic lives in Python, not in YAML (issue 18): counted over roles/ and playbooks/, the
tasks that compute (set_fact), check (assert/fail) and the depth of includes stay small.
A new computation goes into a module, an action or a filter, where it can be tested."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import yaml

ROOT = Path(__file__).resolve().parents[2]
# The ceilings: a ratchet, lowered whenever a change removes more. Issue 18's target is under
# 15 set_fact and under 10 assert/fail. do_image_publish's checks, failure messages, result and
# preflight answer (do_image_publish_preflight_result) are its action do_image_publish_step now;
# nix_remote_builder's decisions are lazily templated role variables (vars/main.yml). Left: the
# roles' published results, do_image_publish_object (set on localhost from the builder), the
# controller's interpreter for the cloud modules, and reap.yml's selection.
MAX_SET_FACT = 14
MAX_ASSERT_FAIL = 5
MAX_INCLUDE_DEPTH = 3

SET_FACT = {"set_fact", "ansible.builtin.set_fact"}
CHECKS = {"assert", "fail", "ansible.builtin.assert", "ansible.builtin.fail"}
INCLUDE_TASKS = {"include_tasks", "import_tasks", "ansible.builtin.include_tasks", "ansible.builtin.import_tasks"}
INCLUDE_ROLE = {"include_role", "import_role", "ansible.builtin.include_role", "ansible.builtin.import_role"}
IMPORT_PLAYBOOK = {"import_playbook", "ansible.builtin.import_playbook"}


def yaml_files() -> List[Path]:
    return sorted(
        [*ROOT.glob("roles/*/tasks/*.yml"), *ROOT.glob("roles/*/handlers/*.yml"), *ROOT.glob("playbooks/**/*.yml")]
    )


def tasks_in(node: Any) -> Iterator[Dict[str, Any]]:
    """Every task of a task list or play list, with blocks, rescue and always."""
    if isinstance(node, list):
        for item in node:
            yield from tasks_in(item)
    elif isinstance(node, dict):
        if "hosts" in node:
            for key in ("pre_tasks", "tasks", "post_tasks", "handlers"):
                yield from tasks_in(node.get(key) or [])
            return
        yield node
        for key in ("block", "rescue", "always"):
            yield from tasks_in(node.get(key) or [])


def count(names: set) -> Dict[str, int]:
    out = {}
    for path in yaml_files():
        found = sum(1 for task in tasks_in(yaml.safe_load(path.read_text()) or []) if set(task) & names)
        if found:
            out[str(path.relative_to(ROOT))] = found
    return out


def included(path: Path, task: Dict[str, Any]) -> Optional[Path]:
    """The file a task includes (tasks, role entry point or playbook), when it names one."""
    for key in INCLUDE_TASKS | IMPORT_PLAYBOOK:
        if key in task:
            target = task[key]["file"] if isinstance(task[key], dict) else task[key]
            if "{{" in str(target):  # provider_{{ ... }}.yml: the deepest of the candidates
                pattern = re.sub(r"\{\{.*?\}\}", "*", str(target))
                candidates = sorted(path.parent.glob(pattern))
                return max(candidates, key=depth) if candidates else None
            return path.parent / target
    for key in INCLUDE_ROLE:
        if key in task:
            role = str(task[key]["name"]).rsplit(".", maxsplit=1)[-1]
            return ROOT / "roles" / role / "tasks" / ("%s.yml" % task[key].get("tasks_from", "main"))
    return None


def depth(path: Path, seen: frozenset = frozenset()) -> int:
    """How deep includes nest below this file (0: it includes nothing)."""
    if path in seen or not path.is_file():
        return 0
    deepest = 0
    for task in tasks_in(yaml.safe_load(path.read_text()) or []):
        target = included(path, task)
        if target is not None:
            deepest = max(deepest, 1 + depth(target, seen | {path}))
    return deepest


def test_set_fact_count() -> None:
    found = count(SET_FACT)
    assert sum(found.values()) <= MAX_SET_FACT, found


def test_assert_and_fail_count() -> None:
    found = count(CHECKS)
    assert sum(found.values()) <= MAX_ASSERT_FAIL, found


def test_includes_are_at_most_three_levels_deep() -> None:
    # a pipeline playbook imports its parts; the levels counted are those below the top playbook
    tops = [ROOT / "playbooks" / p for p in ("build_do_image.yml", "build_sd_aarch64.yml", "reap.yml")]
    found = {str(p.relative_to(ROOT)): depth(p) - 1 for p in tops}
    assert max(found.values()) <= MAX_INCLUDE_DEPTH, found


def test_the_counting_finds_what_it_counts(tmp_path: Path) -> None:
    text = (
        "- hosts: x\n  tasks:\n    - block:\n        - ansible.builtin.set_fact: {a: 1}\n"
        "      rescue:\n        - fail: {msg: x}\n"
    )
    tasks = list(tasks_in(yaml.safe_load(text)))
    assert sum(1 for t in tasks if set(t) & SET_FACT) == 1 and sum(1 for t in tasks if set(t) & CHECKS) == 1
    (tmp_path / "a.yml").write_text("- ansible.builtin.include_tasks: b.yml\n")
    (tmp_path / "b.yml").write_text("- ansible.builtin.include_tasks: c.yml\n")
    (tmp_path / "c.yml").write_text("- ansible.builtin.debug: {msg: x}\n")
    assert depth(tmp_path / "a.yml") == 2

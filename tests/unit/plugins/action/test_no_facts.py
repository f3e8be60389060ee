"""No action plugin answers in ``ansible_facts`` (issue 20). ansible-core 2.20 deprecates reading
a fact as a top-level variable (INJECT_FACTS_AS_VARS: a [DEPRECATION WARNING] on every run), and
facts land in a user's persistent fact cache (AWX's, jsonfile), from which a later run could read
a stale builder. The actions' values are registered results instead (the roles and playbooks say
``register:``).

The one use left is reading the discovered interpreter out of ``task_vars['ansible_facts']``
(nix_build, fetch_artifact, b2_builder_upload, wait_for_builder); that reads, it sets nothing.
``tests/matrix/test_installed_pipeline.py`` checks the other side: no deprecation warning in a
whole pipeline run under ansible-core 2.21."""

from __future__ import annotations

import ast
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
from ansible.plugins.action import ActionBase
from ansible_collections.nixforge.images.plugins.action import builder_host_prepare, pipeline_step

ACTIONS = Path(__file__).resolve().parents[4] / "plugins" / "action"


def _parents(tree: ast.AST) -> Dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def _reads_task_vars(node: ast.AST, parents: Dict[ast.AST, ast.AST]) -> bool:
    """``task_vars.get("ansible_facts", ...)`` or ``task_vars["ansible_facts"]`` (not assigned to)."""
    parent = parents.get(node)
    if isinstance(parent, ast.Call) and parent.args and parent.args[0] is node:
        func = parent.func
        return (
            isinstance(func, ast.Attribute)
            and func.attr == "get"
            and isinstance(func.value, ast.Name)
            and func.value.id == "task_vars"
        )
    if isinstance(parent, ast.Subscript) and isinstance(parent.ctx, ast.Load):
        return isinstance(parent.value, ast.Name) and parent.value.id == "task_vars"
    return False


def fact_answers(source: str) -> List[int]:
    """Lines where the code names ansible_facts other than to read the task's variables: a
    dict key, a keyword (``dict(ansible_facts=...)``), a subscript assigned to, ``setdefault``."""
    tree = ast.parse(source)
    parents = _parents(tree)
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "ansible_facts":
            lines.append(node.value.lineno)
        elif isinstance(node, ast.Constant) and node.value == "ansible_facts" and not _reads_task_vars(node, parents):
            lines.append(node.lineno)
    return sorted(lines)


@pytest.mark.parametrize("path", sorted(ACTIONS.glob("*.py")), ids=lambda path: path.name)
def test_no_action_plugin_returns_facts(path: Path) -> None:
    found = fact_answers(path.read_text())
    assert not found, "%s names ansible_facts on lines %s: return the values in the result, to be registered" % (
        path.name,
        found,
    )


@pytest.mark.parametrize(
    "source",
    [
        'def run(self):\n    return {"changed": False, "ansible_facts": {"x": 1}}\n',
        "def run(self):\n    return dict(changed=False, ansible_facts={'x': 1})\n",
        'def run(self, result):\n    result["ansible_facts"] = {"x": 1}\n',
        'def run(self, result):\n    result.setdefault("ansible_facts", {})["x"] = 1\n',
        'def run(self, task_vars):\n    task_vars["ansible_facts"] = {}\n',
    ],
)
def test_the_check_sees_facts_however_they_are_written(source: str) -> None:
    assert fact_answers(source)


def test_the_check_lets_the_interpreter_lookup_through() -> None:
    source = (
        "def run(self, task_vars):\n"
        '    a = task_vars.get("ansible_facts", {}).get("discovered_interpreter_python")\n'
        '    b = task_vars["ansible_facts"]["discovered_interpreter_python"]\n'
    )
    assert fact_answers(source) == []


def _step(args: Dict[str, Any]) -> Dict[str, Any]:
    full: Dict[str, Any] = {key: spec.get("default") for key, spec in pipeline_step.ARGUMENT_SPEC.items()}
    full.update(args)
    module = object.__new__(pipeline_step.ActionModule)
    return module.step(full)


def test_pipeline_steps_answer_in_their_result() -> None:
    """The keys the playbooks read from the registered results (nixforge__build, nixforge__failure,
    nixforge__spot_retry)."""
    started = _step({"step": "start", "kind": "do", "given": {"build_id": "b1"}})
    assert {"build_id", "pipeline", "build_mode", "started_epoch", "require_kvm", "ec2"} <= set(started)
    assert set(started["ec2"]) == {
        "architecture",
        "instance_types",
        "nested_virtualization",
        "on_demand_fallback",
        "market",
    }
    notice = {"action": "terminate"}
    failed = _step({"step": "failed", "task": "Build", "msg": "boom", "host": "b", "interrupted": notice})
    assert failed == {"error": "Build on b: boom", "interrupted": notice}
    assert abs(_step({"step": "gone"})["gone_epoch"] - time.time()) < 5
    builder = {"type": "a1.2xlarge", "provider": "ec2", "lifecycle": "spot", "started_epoch": 1}
    given = {"interrupted": notice, "builder": builder, "instance_types": ["a1.2xlarge", "c7g.2xlarge"]}
    plan = _step({"step": "retry", "retry": given})
    assert plan["retry"] is True and plan["instance_types"] == ["c7g.2xlarge"] and plan["market"] == "spot"
    for answer in (started, failed, plan):
        assert "ansible_facts" not in answer


def test_the_steps_say_what_they_decided_in_msg() -> None:
    """The start, retry and report steps carry the message their debug task used to print."""
    started = _step({"step": "start", "kind": "sd-aarch64", "given": {"build_id": "b1"}})
    assert started["msg"] == "Build b1 (pipeline sd-aarch64, build mode builder)"
    quiet = _step({"step": "retry", "build_id": "b1", "retry": {"interrupted": {}, "builder": {}}})
    assert "msg" not in quiet and quiet["retry"] is False
    builder = {"type": "a1.2xlarge", "provider": "ec2", "lifecycle": "spot", "started_epoch": 1}
    notice = {"action": "terminate"}
    given = {"interrupted": notice, "builder": builder, "instance_types": ["a1.2xlarge", "c7g.2xlarge"]}
    plan = _step({"step": "retry", "build_id": "b1", "retry": given})
    assert plan["msg"].startswith("Build b1 was interrupted by EC2 (spot) on a1.2xlarge")
    assert plan["msg"].endswith("Building once more on a fresh builder (another candidate type).")
    off = _step({"step": "retry", "build_id": "b1", "retry": dict(given, enabled=False)})
    assert off["msg"].endswith("No retry: nixforge_spot_retry is off.")


def test_a_step_with_a_message_is_shown_like_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    module = object.__new__(pipeline_step.ActionModule)
    monkeypatch.setattr(ActionBase, "run", lambda self, tmp=None, task_vars=None: {})
    for args, shown in (({"step": "start", "given": {"build_id": "b1"}}, True), ({"step": "gone"}, False)):
        full = {key: spec.get("default") for key, spec in pipeline_step.ARGUMENT_SPEC.items()}
        full.update(args)
        answer = (None, full)
        monkeypatch.setattr(module, "validate_argument_spec", lambda argument_spec, a=answer: a, raising=False)
        result = module.run(task_vars={})
        assert result.get("_ansible_verbose_always", False) is shown, result
    full = {key: spec.get("default") for key, spec in pipeline_step.ARGUMENT_SPEC.items()}
    full.update(step="stop", build_id="b1", error="boom")
    monkeypatch.setattr(module, "validate_argument_spec", lambda argument_spec: (None, full), raising=False)
    failed = module.run(task_vars={})
    assert failed["failed"] is True and "_ansible_verbose_always" not in failed


def _prepare(stage: str, tmp_path: Path, **args: Any) -> Dict[str, Any]:
    p: Dict[str, Any] = {key: spec.get("default") for key, spec in builder_host_prepare.ARGUMENT_SPEC.items()}
    p.update(stage=stage, build_id="b1", provider="ec2", state_dir=str(tmp_path / "state"), **args)
    method = getattr(builder_host_prepare.ActionModule, "_" + stage)
    answer: Dict[str, Any] = method(p, False)
    assert "ansible_facts" not in answer
    return answer


def test_builder_host_prepare_stages_answer_in_their_result(tmp_path: Path) -> None:
    """The keys roles/builder_host/vars/main.yml and tasks/teardown.yml read."""
    prepared = _prepare("provision", tmp_path, ssh_cidr="203.0.113.7/32")
    assert prepared["user_public_key"].startswith("ssh-ed25519 ")
    assert prepared["host_public_key"].startswith("ssh-ed25519 ")
    assert {"started_epoch", "started_at", "expires_at", "keys_made"} <= set(prepared)
    state: Optional[Dict[str, Any]] = _prepare("teardown", tmp_path)["state"]
    assert state == {}
    before = int(time.time())
    cleaned = _prepare("cleanup", tmp_path, result={"removed": {"instances": ["i-1"]}, "ended": []})
    after = int(time.time())
    # builder_host_teardown_result, as documented in meta/argument_specs.yml
    assert {k: cleaned[k] for k in ("provider", "build_id", "removed", "ended", "left")} == {
        "provider": "ec2",
        "build_id": "b1",
        "removed": {"instances": ["i-1"]},
        "ended": [],
        "left": {},
    }
    assert cleaned["removed_paths"]
    assert before <= cleaned["gone_epoch"] <= after  # the report's and the retry's end of the builder


def test_the_record_stage_describes_a_cloud_builder_first(tmp_path: Path) -> None:
    """One step for the cloud providers: the description (builder_host__machine) and state.json."""
    _prepare("provision", tmp_path, ssh_cidr="203.0.113.7/32")
    result = {"instance_id": "i-1", "instance_type": "c6g.large", "lifecycle": "spot", "ssh_host": "10.0.0.5"}
    given = {"host_public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB host", "expires_at": "", "region": "r"}
    recorded = _prepare("record", tmp_path, result=result, given=given, record={"provider": "ec2"})
    assert recorded["machine"]["host"] == "10.0.0.5" and recorded["machine"]["id"] == "i-1"
    assert "state.json" in recorded["written"]
    assert (tmp_path / "state" / "state.json").exists()
    # a machine given (the ssh provider's, described before its own tasks) is recorded as it is
    again = _prepare("record", tmp_path, machine=recorded["machine"], result={"instance_id": "other"})
    assert again["machine"] == recorded["machine"]
    assert "add_host" not in again  # no inventory entry asked for
    inventory = {"name": "nixforge-builder-b1", "group": "g", "control_path_dir": "/c", "public_key": "k",
                 "started_at": "s", "started_epoch": 1, "expires_at": "e", "playbook_python": "/p"}  # fmt: skip
    added = _prepare("record", tmp_path, result=result, given=given, inventory=inventory)
    # builder_host_result and the inventory entry that the strategy applies, as for add_host
    assert added["add_host"]["host_name"] == "nixforge-builder-b1" and added["address"] == "10.0.0.5"
    assert added["add_host"]["host_vars"]["ansible_host"] == "10.0.0.5"


def test_the_builder_is_added_through_the_actions_own_add_host_where_ansible_has_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ansible-core 2.21 adds hosts through ActionBase.add_host (its add_host action does); before,
    the strategy applies the ``add_host`` answer, which the record stage returns in both cases."""
    module = object.__new__(builder_host_prepare.ActionModule)
    entry = {"host_name": "nixforge-builder-b1", "groups": ["g"], "host_vars": {"ansible_host": "10.0.0.5"}}
    calls: List[Any] = []

    def add_host(self: Any, host_name: str, **kwargs: Any) -> bool:
        calls.append((host_name, kwargs))
        return True

    monkeypatch.setattr(ActionBase, "add_host", add_host, raising=False)
    module._add_host(entry)
    assert calls == [("nixforge-builder-b1", {"host_vars": {"ansible_host": "10.0.0.5"}, "parent_group_names": ["g"]})]
    monkeypatch.delattr(ActionBase, "add_host")
    module._add_host(entry)  # ansible-core before 2.21: nothing to call
    assert len(calls) == 1

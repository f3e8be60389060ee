"""Teardown of a build that provisioned nothing, for every provider that rents machines
(the ssh provider's case is test_builder_ssh_provider.py::test_teardown_without_provisioning_is_safe):
builder_host's teardown entry point with a fresh build id asks the provider's real API
(the sandbox's EC2 and Metal), reports nothing removed and nothing ended, changes nothing
and leaves no state behind."""

from __future__ import annotations

from pathlib import Path

import pytest
from _pipeline import new_id, playbook_env, resources_of, run_playbook
from _record import recording, records, result_of

pytestmark = [pytest.mark.sandbox, pytest.mark.spread]

TEARDOWN = (
    "- hosts: localhost\n  gather_facts: false\n  tasks:\n"
    "    - ansible.builtin.set_fact:\n        ansible_python_interpreter: '{{ ansible_playbook_python }}'\n"
    "    - ansible.builtin.include_role:\n        name: nixforge.images.builder_host\n"
    "        tasks_from: teardown\n"
)


@pytest.mark.parametrize(
    ("provider", "asked"),
    [
        ("ec2", "Remove every EC2 resource of the build"),
        ("metal", "Remove the build's Metal device and project SSH key"),
    ],
)
def test_teardown_without_provisioning_removes_nothing(
    env: dict[str, str], tmp_path: Path, provider: str, asked: str
) -> None:
    build_id = new_id("t-never-" + provider.split("_")[0])
    play = tmp_path / "teardown.yml"
    play.write_text(TEARDOWN)
    record = tmp_path / "record.jsonl"
    variables = {
        "nixforge_build_id": build_id,
        "builder_host_provider": provider,
        "builder_host_state_dir": str(tmp_path / "state"),
    }
    before = resources_of(build_id)
    proc = run_playbook(play, recording(playbook_env(env), record), variables)
    assert proc.returncode == 0, proc.stdout[-4000:]
    recorded = records(record)
    # the provider's module really ran against the API (not skipped)
    assert [r for r in recorded if asked in r["task"] and r["status"] == "ok"], [r["task"] for r in recorded]
    # registered as builder_host_teardown_result
    result = result_of(recorded, "Publish the teardown result", "ok")["result"]
    assert result["provider"] == provider and result["build_id"] == build_id, result
    assert all(not ids for ids in (result["removed"] or {}).values()), result
    assert result["ended"] == [], result
    changed = [r["task"] for r in recorded if r["result"].get("changed")]
    assert changed == [], changed
    assert [r for r in recorded if r["status"] in ("failed", "unreachable")] == []
    assert not (tmp_path / "state").exists()
    assert before == [] and resources_of(build_id) == []

"""builder_host's ssh provider against a host the user already has (a plain sandbox host).

The host already has Nix (the sandbox's Debian 13 + Nix image; nix_bootstrap only tunes it
before the snapshot, as on a user's machine).
Provisioning installs a per-build key, a work dir, and nix_remote_builder adds its
nix.conf block, build user and authorized key; teardown must leave the host exactly as
it was. Real SSH, real sudo, real Nix.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from pathlib import Path

import pytest
from _pipeline import (
    Host,
    boot_host,
    delete_host,
    playbook_env,
    resources_of,
    run_playbook,
    sandbox_env,
    snapshot,
)
from _record import recording, records, result_of

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

SETUP = """
- name: The user's own host already has Nix
  hosts: existing
  gather_facts: false
  become: true
  roles:
    - role: nixforge.images.nix_bootstrap
"""

PROVISION_AND_TEARDOWN = """
- name: Provision
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Provision the existing host
      ansible.builtin.include_role:
        name: nixforge.images.builder_host

- name: Use it
  hosts: nixforge_builders
  gather_facts: false
  become: true
  tasks:
    - name: Make it a remote builder (recorded)
      ansible.builtin.include_role:
        name: nixforge.images.nix_remote_builder
    - name: Put a file in the work dir
      ansible.builtin.copy:
        dest: "{{ nixforge_work_dir }}/scratch.txt"
        content: "build output\\n"
        mode: "0644"
    - name: Show what is there now
      ansible.builtin.command:
        argv: [sh, -c, "cat /etc/nix/nix.conf; getent passwd nixforge; cat {{ nixforge_record_file }}"]
      register: during
      changed_when: false
      become: true
    - name: Keep it for the test
      ansible.builtin.copy:
        dest: "{{ out_dir }}/during.txt"
        content: "{{ during.stdout }}\\n{{ nix_remote_builder_result | to_json }}\\n"
        mode: "0644"
      delegate_to: localhost

- name: Teardown (twice, the second must be a no-op)
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Tear down
      ansible.builtin.include_role:
        name: nixforge.images.builder_host
        tasks_from: teardown
    - name: Tear down again
      ansible.builtin.include_role:
        name: nixforge.images.builder_host
        tasks_from: teardown
"""


@pytest.fixture(scope="module")
def sandbox(sandbox_instance) -> dict[str, str]:
    # The session fixture owns the sandbox's life cycle; this module only reads its endpoints.
    env = sandbox_env()
    assert env is not None, f"sandbox instance {sandbox_instance.instance.number} is not up"
    return env


@pytest.fixture(scope="module")
def existing(sandbox: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    tmp = tmp_path_factory.mktemp("existing")
    host = boot_host(sandbox, tmp / "keys", owner="test-ssh-provider", suite="trixie+nix")
    inventory = tmp / "existing.yml"
    inventory.write_text(
        "all:\n  hosts:\n    existing:\n"
        f"      ansible_host: {host.ip}\n      ansible_user: root\n"
        f"      ansible_ssh_private_key_file: {host.key}\n"
        f"      ansible_ssh_common_args: -o UserKnownHostsFile={host.known_hosts} -o StrictHostKeyChecking=yes\n"
    )
    play = tmp / "setup.yml"
    play.write_text(SETUP)
    try:
        proc = run_playbook(play, playbook_env(sandbox), None, "-i", str(inventory))
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
        yield host
    finally:
        delete_host(sandbox, host)


def provision_vars(host: Host, build_id: str, tmp: Path, user: str) -> dict:
    return {
        "nixforge_build_id": build_id,
        "builder_host_provider": "ssh",
        "builder_host_ssh_host": host.ip,
        "builder_host_ssh_user": user,
        "builder_host_ssh_private_key_file": str(host.key),
        "builder_host_ssh_host_key": host.host_public_key,
        "builder_host_state_dir": str(tmp / "state"),
        "out_dir": str(tmp),
        # A dedicated build user, so that creating and removing a user is covered too
        # (the sandbox's single-user Nix would otherwise pick root).
        "nix_remote_builder_user": "nixforge",
    }


@pytest.mark.parametrize("user", ["root", "admin"])
def test_ssh_provider_leaves_nothing(sandbox: dict[str, str], existing: Host, tmp_path: Path, user: str) -> None:
    build_id = f"t-ssh-{user}"
    before = snapshot(existing)
    play = tmp_path / "play.yml"
    play.write_text(PROVISION_AND_TEARDOWN)
    proc = run_playbook(play, playbook_env(sandbox), provision_vars(existing, build_id, tmp_path, user))
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-3000:]

    during = (tmp_path / "during.txt").read_text()
    assert f"nixforge {build_id} nix_remote_builder" in during  # the marked nix.conf block
    assert "extra-trusted-users = nixforge" in during
    assert "nixforge:" in during  # the build user existed during the build
    assert '"kind": "user"' in during  # ... and was recorded as ours

    after = snapshot(existing)
    assert after == before, "\n".join(difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm=""))
    # Host key checking stayed on and the private key is gone from the controller.
    assert not (tmp_path / "state" / "id_ed25519").exists()
    assert (tmp_path / "state" / "known_hosts").read_text().split()[1:] == existing.host_public_key.split()[:2]
    assert resources_of(build_id) == []


def test_unpinned_host_is_refused(sandbox: dict[str, str], existing: Host, tmp_path: Path) -> None:
    """Without the host key (given or in known_hosts) nothing is touched: checking is never turned off."""
    before = snapshot(existing)
    variables = provision_vars(existing, "t-ssh-unpinned", tmp_path, "root")
    variables["builder_host_ssh_host_key"] = ""
    variables["builder_host_ssh_known_hosts_file"] = str(tmp_path / "empty_known_hosts")
    (tmp_path / "empty_known_hosts").write_text("")
    play = tmp_path / "play.yml"
    play.write_text(PROVISION_AND_TEARDOWN)
    proc = run_playbook(play, playbook_env(sandbox), variables)
    assert proc.returncode != 0
    assert "builder_host_ssh_host_key" in proc.stdout
    assert snapshot(existing) == before
    assert resources_of("t-ssh-unpinned") == []


def test_teardown_without_provisioning_is_safe(sandbox: dict[str, str], existing: Host, tmp_path: Path) -> None:
    play = tmp_path / "teardown.yml"
    play.write_text(
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n"
        "    - ansible.builtin.include_role:\n        name: nixforge.images.builder_host\n"
        "        tasks_from: teardown\n"
    )
    variables = provision_vars(existing, "t-ssh-never", tmp_path, "root")
    before = snapshot(existing)
    record = tmp_path / "record.jsonl"
    proc = run_playbook(play, recording(playbook_env(sandbox), record), variables)
    assert proc.returncode == 0, proc.stdout[-4000:]
    recorded = records(record)
    # it reports that there was nothing to remove, changes nothing and says so
    # registered as builder_host_teardown_result
    published = result_of(recorded, "Publish the teardown result", "ok")["result"]
    assert {key: published.get(key) for key in ("provider", "build_id", "removed", "ended")} == {
        "provider": "ssh",
        "build_id": "t-ssh-never",
        "removed": {},
        "ended": [],
    }, published
    changed = [r["task"] for r in recorded if r["result"].get("changed")]
    assert changed == [], changed
    assert [r for r in recorded if r["status"] in ("failed", "unreachable")] == []
    # the host was not touched (teardown never logged in to undo anything) and no state appeared
    assert snapshot(existing) == before
    assert not (tmp_path / "state").exists()
    assert resources_of("t-ssh-never") == []


LOCAL = """
- hosts: localhost
  gather_facts: false
  tasks:
    - ansible.builtin.include_role:
        name: nixforge.images.builder_host
    - ansible.builtin.copy:
        dest: "{{ builder_host_result.work_dir }}/scratch.txt"
        content: "x\\n"
        mode: "0644"
      delegate_to: "{{ builder_host_result.inventory_hostname }}"
    - ansible.builtin.stat:
        path: "{{ builder_host_result.work_dir }}/scratch.txt"
      register: scratch
    - ansible.builtin.assert:
        that: [scratch.stat.exists]
    - ansible.builtin.include_role:
        name: nixforge.images.builder_host
        tasks_from: teardown
"""


def test_controller_itself_as_builder(tmp_path: Path) -> None:
    """builder_host_ssh_connection=local: the controller is the builder; only our work dir comes and goes."""
    work_dir = tmp_path / "work"
    play = tmp_path / "local.yml"
    play.write_text(LOCAL)
    env = playbook_env({})
    proc = run_playbook(
        play,
        env,
        {
            "nixforge_build_id": "t-ssh-local",
            "builder_host_provider": "ssh",
            "builder_host_ssh_connection": "local",
            "builder_host_ssh_work_dir": str(work_dir),
            "builder_host_state_dir": str(tmp_path / "state"),
        },
    )
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert not work_dir.exists()
    assert not (tmp_path / "state" / "id_ed25519").exists()

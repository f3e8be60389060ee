"""Remote-builder mode: a Nix client delegates with --max-jobs 0 to a builder set up by
nix_remote_builder, once with a Metal device (through the emulator) and once with an
existing host (ssh provider). Real SSH, real Nix on both ends.

Proof that the build ran on the builder: the derivation writes the hostname of the
machine that built it, the client has no local build slots (--max-jobs 0), and the
client's Nix log names the builder's URI.
"""

from __future__ import annotations

import difflib
import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from _pipeline import Host, boot_host, delete_host, playbook_env, resources_of, run_playbook, snapshot

pytestmark = [pytest.mark.sandbox, pytest.mark.slow, pytest.mark.spread]

PROBE = r"""
{ nonce, system }:
builtins.derivation {
  name = "nixforge-remote-probe";
  inherit system nonce;
  builder = "/bin/sh";
  args = [ "-c" "echo \"built-on=$(cat /etc/hostname) nonce=$nonce\" > $out" ];
  PATH = "/usr/bin:/bin";
  # Only a machine announcing big-parallel may build it.
  requiredSystemFeatures = [ "big-parallel" ];
}
"""

PLAY = """
- name: Provision the builder
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Provision
      ansible.builtin.include_role:
        name: nixforge.images.builder_host

- name: Make it a remote builder
  hosts: nixforge_builders
  gather_facts: false
  become: true
  tasks:
    - name: Install Nix
      ansible.builtin.include_role:
        name: nixforge.images.nix_bootstrap
      when: bootstrap_builder | bool
    - name: Configure the remote builder
      ansible.builtin.include_role:
        name: nixforge.images.nix_remote_builder
    - name: Who is the builder
      ansible.builtin.command: cat /etc/hostname
      register: builder_hostname
      changed_when: false
    - name: Hand the builder's details to the controller
      ansible.builtin.set_fact:
        rb_builder: "{{ nix_remote_builder_result | combine({'hostname': builder_hostname.stdout | trim}) }}"
      delegate_to: localhost
      delegate_facts: true

- name: Build on it from a Nix client
  hosts: client
  gather_facts: false
  vars:
    rb: "{{ hostvars['localhost'] }}"
  tasks:
    - name: Install Nix on the client
      ansible.builtin.include_role:
        name: nixforge.images.nix_bootstrap
    - name: Set up the client (machines file, pinned host key)
      ansible.builtin.include_role:
        name: nixforge.images.nix_remote_builder
        tasks_from: client
      vars:
        nix_remote_builder_machines:
          - uri: "ssh://{{ rb.rb_builder.user }}@{{ rb.builder_host_result.address }}"
            systems: ["{{ rb.rb_builder.system }}"]
            ssh_key_src: "{{ rb.builder_host_result.private_key_file }}"
            host_public_key: "{{ rb.builder_host_result.host_public_key }}"
            max_jobs: 2
            features: "{{ rb.rb_builder.features }}"
    - name: Copy the probe derivation
      ansible.builtin.copy:
        dest: "{{ nix_remote_builder_client_dir }}/probe.nix"
        content: "{{ probe }}"
        mode: "0644"
    - name: Build it with --max-jobs 0
      ansible.builtin.include_role:
        name: nixforge.images.nix_remote_builder
        tasks_from: build
      vars:
        nix_remote_builder_build_file: "{{ nix_remote_builder_client_dir }}/probe.nix"
        nix_remote_builder_build_extra_args:
          [--argstr, nonce, "{{ nonce }}", --argstr, system, "{{ rb.rb_builder.system }}"]
    - name: Read the output and the machines file
      ansible.builtin.command:
        argv:
          - sh
          - -c
          - "cat {{ nix_remote_builder_build_result.out_link }}; cat {{ nix_remote_builder_client.machines_file }}"
      register: probe_out
      changed_when: false
    - name: Keep them for the test
      ansible.builtin.copy:
        dest: "{{ out_dir }}/result.json"
        content: >-
          {{ {'out': probe_out.stdout, 'stderr': nix_remote_builder__build.stderr,
              'builder': rb.rb_builder, 'address': rb.builder_host_result.address} | to_json }}
        mode: "0644"
      delegate_to: localhost
    - name: Remove the client side
      ansible.builtin.include_role:
        name: nixforge.images.nix_remote_builder
        tasks_from: client_teardown

- name: Tear down
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Tear down the builder
      ansible.builtin.include_role:
        name: nixforge.images.builder_host
        tasks_from: teardown
"""

TEARDOWN_ONLY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - ansible.builtin.include_role:
        name: nixforge.images.builder_host
        tasks_from: teardown
"""


@pytest.fixture
def client(env: dict[str, str], tmp_path: Path) -> Iterator[Host]:
    host = boot_host(env, tmp_path / "client-keys", owner="test-remote-builder-client", suite="trixie+nix")
    try:
        yield host
    finally:
        delete_host(env, host)


def client_inventory(tmp_path: Path, host: Host) -> Path:
    inventory = tmp_path / "client.yml"
    inventory.write_text(
        "all:\n  hosts:\n    client:\n"
        f"      ansible_host: {host.ip}\n      ansible_user: root\n"
        f"      ansible_ssh_private_key_file: {host.key}\n"
        f"      ansible_ssh_common_args: -o UserKnownHostsFile={host.known_hosts} -o StrictHostKeyChecking=yes\n"
    )
    return inventory


def run_remote_build(env: dict[str, str], tmp_path: Path, client: Host, variables: dict) -> dict:
    play = tmp_path / "play.yml"
    play.write_text(PLAY)
    nonce = secrets.token_hex(8)
    variables = {
        **variables,
        "probe": PROBE,
        "nonce": nonce,
        "out_dir": str(tmp_path),
        "builder_host_state_dir": str(tmp_path / "state"),
        "nix_remote_builder_client_dir": f"/var/tmp/nixforge-client-{variables['nixforge_build_id']}",
    }
    try:
        proc = run_playbook(play, playbook_env(env), variables, "-i", str(client_inventory(tmp_path, client)))
        assert proc.returncode == 0, proc.stdout[-10000:] + proc.stderr[-3000:]
    finally:
        # whatever happened, nothing of the build may stay
        teardown = tmp_path / "teardown.yml"
        teardown.write_text(TEARDOWN_ONLY)
        run_playbook(teardown, playbook_env(env), variables)
    result = json.loads((tmp_path / "result.json").read_text())
    result["nonce"] = nonce
    return result


def assert_built_on_builder(result: dict, client: Host) -> None:
    builder = result["builder"]
    out = result["out"].splitlines()
    assert out[0] == f"built-on={builder['hostname']} nonce={result['nonce']}"
    assert builder["hostname"] != client.ssh("cat /etc/hostname").stdout.strip()
    assert "big-parallel" in builder["features"]
    # Nix says where it built; with --max-jobs 0 it could not have built locally.
    assert f"ssh://{builder['user']}@{result['address']}" in result["stderr"]
    # The machines line: 8 fields, PUBKEY last.
    line = next(x for x in out[1:] if x.startswith("ssh://"))
    assert len(line.split()) == 8


def test_metal_device_as_remote_builder(env: dict[str, str], client: Host, tmp_path: Path) -> None:
    build_id = "t-rb-metal-" + secrets.token_hex(3)
    result = run_remote_build(
        env,
        tmp_path,
        client,
        {"nixforge_build_id": build_id, "builder_host_provider": "metal", "bootstrap_builder": True},
    )
    assert_built_on_builder(result, client)
    assert result["builder"]["platform"] == "nix.conf"
    assert resources_of(build_id) == []
    assert not (tmp_path / "state" / "id_ed25519").exists()
    assert client.ssh(f"test -e /var/tmp/nixforge-client-{build_id}", check=False).returncode != 0


SETUP = """
- name: The user's own host already has Nix
  hosts: existing
  gather_facts: false
  roles:
    - role: nixforge.images.nix_bootstrap
"""


def test_existing_host_as_remote_builder(env: dict[str, str], client: Host, tmp_path: Path) -> None:
    existing = boot_host(env, tmp_path / "existing-keys", owner="test-remote-builder-existing", suite="trixie+nix")
    try:
        inventory = tmp_path / "existing.yml"
        inventory.write_text(
            "all:\n  hosts:\n    existing:\n"
            f"      ansible_host: {existing.ip}\n      ansible_user: root\n"
            f"      ansible_ssh_private_key_file: {existing.key}\n"
            "      ansible_ssh_common_args: "
            f"-o UserKnownHostsFile={existing.known_hosts} -o StrictHostKeyChecking=yes\n"
        )
        setup = tmp_path / "setup.yml"
        setup.write_text(SETUP)
        proc = run_playbook(setup, playbook_env(env), None, "-i", str(inventory))
        assert proc.returncode == 0, proc.stdout[-6000:]
        before = snapshot(existing)

        build_id = "t-rb-ssh-" + secrets.token_hex(3)
        result = run_remote_build(
            env,
            tmp_path,
            client,
            {
                "nixforge_build_id": build_id,
                "builder_host_provider": "ssh",
                "builder_host_ssh_host": existing.ip,
                "builder_host_ssh_user": "admin",
                "builder_host_ssh_private_key_file": str(existing.key),
                "builder_host_ssh_host_key": existing.host_public_key,
                "bootstrap_builder": False,
            },
        )
        assert_built_on_builder(result, client)
        after = snapshot(existing)
        assert after == before, "\n".join(difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm=""))
        assert resources_of(build_id) == []
    finally:
        delete_host(env, existing)

"""wait_for_builder: SSH failures that waiting cannot heal end the wait at once, with a
message that says what to fix (issue: a too-long control socket path used to be retried
for the whole 300 s, like a slow boot). Real SSH to a real sandbox host."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from nfsandbox.testing import ansible_playbook, ssh_keypair, write_inventory

pytestmark = [pytest.mark.sandbox]

PLAY = """\
- name: Wait for the builder
  hosts: builders
  gather_facts: false
  tasks:
    - name: Wait
      nixforge.images.wait_for_builder:
        timeout: {timeout}
        sleep: 1
        permanent_error_grace: 4
"""


@pytest.fixture(scope="module")
def booted(sandbox_instance, tmp_path_factory):
    keys = tmp_path_factory.mktemp("wait-keys")
    key, pub = ssh_keypair(keys)
    host = sandbox_instance.boot_host(f"#cloud-config\nssh_authorized_keys:\n  - {pub}\n", owner="test-wait")
    yield host, key
    sandbox_instance.stop_host(host["name"])
    assert [r for r in sandbox_instance.resources() if r.get("id") == host["name"]] == []


def run_wait(
    directory: Path, host: dict, key: Path, extra: str = "", timeout: str = "120"
) -> tuple[subprocess.CompletedProcess, float]:
    inv = write_inventory(directory, {"builder": host}, key)
    if extra:
        inv.path.write_text(inv.path.read_text() + extra + "\n")
    play = directory / "play.yml"
    play.write_text(PLAY.format(timeout=timeout))
    start = time.monotonic()
    proc = ansible_playbook(["-i", str(inv.path), str(play)], inv.env, timeout=300)
    return proc, time.monotonic() - start


def test_healthy_host_is_reached(booted, tmp_path):
    host, key = booted
    proc = run_wait(tmp_path, host, key)[0]
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_long_control_socket_path_fails_at_once(booted, tmp_path):
    host, key = booted
    long_dir = Path("/tmp") / ("nixforge-long-" + "x" * 100) / "cp"
    proc, elapsed = run_wait(tmp_path, host, key, f"[builders:vars]\nansible_control_path_dir={long_dir}")
    assert proc.returncode != 0
    assert "108 bytes" in proc.stdout and "builder_host_control_path_dir" in proc.stdout, proc.stdout
    assert elapsed < 60, elapsed


def test_host_key_mismatch_fails_after_the_grace_not_the_timeout(booted, tmp_path):
    host, key = booted
    other_key = ssh_keypair(tmp_path / "other", name="ssh_host_ed25519_key")[0]
    wrong = dict(host)
    wrong["host_public_keys"] = {"ed25519": Path(str(other_key) + ".pub").read_text().strip()}
    proc, elapsed = run_wait(tmp_path, wrong, key)
    assert proc.returncode != 0
    assert "not the one pinned for this build" in proc.stdout, proc.stdout
    assert elapsed < 60, elapsed


def test_refused_key_fails_after_the_grace_not_the_timeout(booted, tmp_path):
    host = booted[0]
    stranger = ssh_keypair(tmp_path / "stranger")[0]
    proc, elapsed = run_wait(tmp_path, host, stranger)
    assert proc.returncode != 0
    assert "refused the build's SSH key" in proc.stdout, proc.stdout
    assert elapsed < 60, elapsed


def test_bad_argument_is_refused_naming_it(booted, tmp_path):
    host, key = booted
    proc, elapsed = run_wait(tmp_path, host, key, timeout="soon")
    assert proc.returncode != 0
    assert "timeout" in proc.stdout and "soon" in proc.stdout and "int" in proc.stdout, proc.stdout
    assert elapsed < 60, elapsed


def test_timeout_names_the_option_and_is_kept(booted, tmp_path):
    host, key = booted
    # a port nothing listens on: refused on every attempt, which waiting could heal (sshd starting)
    proc, elapsed = run_wait(tmp_path, host, key, "[builders:vars]\nansible_port=2", timeout="4")
    assert proc.returncode != 0
    assert "within 4 s (option 'timeout'" in proc.stdout, proc.stdout
    assert elapsed < 40, elapsed

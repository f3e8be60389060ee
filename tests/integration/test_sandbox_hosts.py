"""Acceptance of the sandbox's builder hosts (issue 2, first half).

Real, not mocked: hosts are booted by the sandbox, reached by ansible-playbook over SSH
with pinned host keys, install nix-bin with apt through the sandbox's proxy, build
with Nix locally and remotely (one host building for the other). Plus: a host that
powers itself off is noticed, and `sandboxctl down` after a crash leaves nothing.

The first tests need no root: they check the user-data parsing and naming that the
rest relies on.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import shutil
import signal
import subprocess
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from nfsandbox import client, procs
from nfsandbox.cli import env_lines
from nfsandbox.config import Instance
from nfsandbox.hosts import cloudinit
from nfsandbox.hosts.aptproxy import machine_mirrors
from nfsandbox.hosts.rootfs import normalize_suite
from nfsandbox.testing import (
    SANDBOXCTL,
    SandboxHandle,
    run_playbook,
    sandbox_unavailable,
    sandboxctl,
    ssh_keypair,
    write_inventory,
)

# -- no root needed ---------------------------------------------------------------------


def test_cloud_config_is_parsed_like_cloud_init() -> None:
    userdata = textwrap.dedent(
        """\
        #cloud-config
        ssh_deletekeys: true
        ssh_keys:
          ed25519_private: |
            PRIVATE
          ed25519_public: ssh-ed25519 AAAA host
          rsa_certificate: ignored
        ssh_authorized_keys: [ssh-ed25519 BBBB user]
        write_files:
          - path: /etc/motd
            content: aGVsbG8=
            encoding: b64
            permissions: '0600'
          - path: /root/later
            content: x
            defer: true
        bootcmd: [[echo, "a b"], echo c]
        runcmd: ["shutdown -P +5"]
        power_state: {mode: poweroff, delay: "+30"}
        packages: [curl, [hello, "2.10-3"]]
        ssh_pwauth: false
        snap: {commands: [x]}
        """
    )
    plan = cloudinit.parse(userdata).to_guest()
    assert plan["ssh_keys"] == {"ed25519": {"private": "PRIVATE\n", "public": "ssh-ed25519 AAAA host"}}
    assert plan["ssh_authorized_keys"] == ["ssh-ed25519 BBBB user"]
    assert plan["disable_root"] is True and plan["default_user"] == "admin"
    assert base64.b64decode(plan["write_files"][0]["content"]) == b"hello"
    assert plan["write_files"][0]["permissions"] == "0600" and plan["write_files"][1]["defer"] is True
    assert plan["bootcmd"] == "#!/bin/sh\necho 'a b'\necho c\n"
    assert plan["runcmd"] == "#!/bin/sh\nshutdown -P +5\n"
    assert plan["power_state"] == {"mode": "poweroff", "delay": "+30"}
    assert plan["packages"] == ["curl", "hello=2.10-3"] and plan["package_update"] is True
    assert plan["package_upgrade"] is False and plan["ssh_pwauth"] is False
    # a key the sandbox does not apply is refused by name (logged by the daemon and the host)
    assert cloudinit.parse(userdata).ignored == ["snap"] and plan["ignored"] == ["snap"]


def test_scripts_gzip_and_multipart_user_data() -> None:
    script = "#!/bin/sh\necho hi\n"
    assert cloudinit.parse(script).user_scripts == [script]
    assert cloudinit.parse(gzip.compress(script.encode())).user_scripts == [script]
    multipart = (
        'Content-Type: multipart/mixed; boundary="B"\nMIME-Version: 1.0\n\n'
        '--B\nContent-Type: text/cloud-config\n\n#cloud-config\nruncmd: ["true"]\n'
        "--B\nContent-Type: text/x-shellscript\n\n" + script + "--B--\n"
    )
    plan = cloudinit.parse(multipart)
    # (the newline before a MIME boundary belongs to the boundary)
    assert plan.user_scripts == [script.rstrip("\n")] and plan.config["runcmd"] == ["true"]
    assert cloudinit.parse(None).to_guest()["ssh_genkeytypes"] == ["rsa", "ecdsa", "ed25519"]


def test_instances_do_not_collide() -> None:
    a, b = Instance(0), Instance(7)
    assert a.bridge != b.bridge and a.network != b.network and a.port("control") != b.port("control")
    assert a.state_dir != b.state_dir and a.cgroup_name != b.cgroup_name
    assert len(b.veth(240)) <= 15  # IFNAMSIZ
    assert {normalize_suite("12"), normalize_suite("debian-13"), normalize_suite("buster")} == {
        "bookworm",
        "trixie",
        "buster",
    }


def test_env_lines_from_state() -> None:
    state = {
        "instance": 3,
        "control_url": "http://127.0.0.1:20060",
        "state_dir": "/run/nixforge-sandbox/3",
        "apt_proxy_url": "http://10.213.3.1:20061",
        "ca_bundle": "/run/nixforge-sandbox/3/tls/bundle.pem",
        "endpoints": {"ec2_endpoint": "http://127.0.0.1:20062", "metal_api_url": "https://x", "B2_REALM": "http://y"},
    }
    env = dict(env_lines(state))
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:20062"
    assert env["REQUESTS_CA_BUNDLE"].endswith("bundle.pem")
    assert env["NIXFORGE_SANDBOX_METAL_API_URL"] == "https://x" and env["B2_REALM"] == "http://y"


def test_apt_proxy_mirrors_come_from_the_machine_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n\n"
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"
    )
    (tmp_path / "sources.list.d" / "other.list").write_text("deb https://packages.example/apt stable main\n")
    assert machine_mirrors(tmp_path) == ("http://mirror.example/debian", "http://mirror.example/debian-security")


def test_up_refuses_without_root() -> None:
    if os.geteuid() != 0:
        proc = subprocess.run([str(SANDBOXCTL), "up"], capture_output=True, text=True, check=False)
    else:
        # Drop to nobody for this one command to see the non-root answer. nobody may not be
        # able to reach the checkout (a clone in root's mode-700 home), so it runs a
        # world-readable copy of sandboxctl and nfsandbox with the system Python.
        copy = Path(tempfile.mkdtemp(prefix="nfs-nonroot-"))
        try:
            shutil.copytree(SANDBOXCTL.parent, copy / "tests" / "sandbox", ignore=shutil.ignore_patterns("__pycache__"))
            (copy / ".venv" / "bin").mkdir(parents=True)
            (copy / ".venv" / "bin" / "python").symlink_to("/usr/bin/python3")
            for path in [copy, *copy.rglob("*")]:
                path.chmod(0o755 if path.is_dir() or os.access(path, os.X_OK) else 0o644)
            argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
            argv += [str(copy / "tests" / "sandbox" / "sandboxctl"), "up"]
            proc = subprocess.run(argv, capture_output=True, text=True, check=False, cwd="/")
        finally:
            shutil.rmtree(copy, ignore_errors=True)
    assert proc.returncode != 0
    assert "needs root" in proc.stderr, proc.stderr


# -- the sandbox --------------------------------------------------------------------------

NIX_CONF = "build-users-group =\nsandbox = false\nsubstituters =\ntrusted-users = root\n"

# Self-contained: the builder is the host's /bin/sh; Nix sets PATH=/path-not-set.
NIX_EXPR = """\
{ nonce }:
derivation {
  name = "sandbox-blob";
  system = "x86_64-linux";
  builder = "/bin/sh";
  inherit nonce;
  args = [ "-c" ''
    PATH=/usr/bin:/bin
    mkdir $out
    cat /etc/hostname > $out/built-on
    head -c 4194304 /dev/urandom > $out/blob
  '' ];
}
"""

PLAYBOOK = """\
- name: Prepare both hosts as Nix builders
  hosts: builders
  become: true
  gather_facts: true
  tasks:
    - name: The host is a real systemd machine on its own address
      ansible.builtin.assert:
        that:
          - ansible_service_mgr == 'systemd'
          - ansible_default_ipv4.address == ansible_host
    - name: Install Nix from Debian through the sandbox's apt proxy
      ansible.builtin.apt:
        name: nix-bin
        update_cache: true
        install_recommends: false
    - name: Directories for Nix and root's keys
      ansible.builtin.file:
        path: "{{ item.path }}"
        state: directory
        mode: "{{ item.mode }}"
      loop:
        - {path: /etc/nix, mode: "0755"}
        - {path: /root/.ssh, mode: "0700"}
    - name: Nix configuration for offline root builds
      ansible.builtin.copy:
        dest: /etc/nix/nix.conf
        content: "{{ nix_conf }}"
        mode: "0644"
    - name: Root accepts the build key (for remote builds)
      ansible.builtin.copy:
        dest: /root/.ssh/authorized_keys
        content: "{{ build_pubkey }}\\n"
        mode: "0600"
    - name: The expression to build
      ansible.builtin.copy:
        dest: /root/blob.nix
        content: "{{ nix_expr }}"
        mode: "0644"

- name: Build locally on A, then on B from A
  hosts: a
  become: true
  gather_facts: false
  tasks:
    - name: A holds the build key and pins B's host key
      ansible.builtin.copy:
        dest: "{{ item.dest }}"
        content: "{{ item.content }}"
        mode: "0600"
      loop:
        - {dest: /root/.ssh/id_build, content: "{{ build_key }}"}
        - {dest: /root/.ssh/known_hosts, content: "{{ b_known_hosts }}"}
      no_log: true
    - name: Local build
      ansible.builtin.command: nix-build /root/blob.nix --argstr nonce local-{{ nonce }} --no-out-link
      register: local_build
      changed_when: true
    - name: Remote build on B (A builds nothing itself)
      ansible.builtin.command: >-
        nix-build /root/blob.nix --argstr nonce remote-{{ nonce }} --no-out-link
        --max-jobs 0
        --builders "ssh://root@{{ b_ip }} x86_64-linux /root/.ssh/id_build 2 1 kvm,big-parallel"
      register: remote_build
      changed_when: true
    - name: Where each output was built
      ansible.builtin.command: cat {{ local_build.stdout }}/built-on {{ remote_build.stdout }}/built-on
      register: built_on
      changed_when: false
    - name: Report to the test
      ansible.builtin.copy:
        dest: "{{ result_file }}"
        content: "{{ {'local': local_build.stdout, 'remote': remote_build.stdout,
          'built_on': built_on.stdout_lines} | to_json }}"
        mode: "0644"
      delegate_to: localhost
      become: false

- name: B has the remote output in its own store
  hosts: b
  become: true
  gather_facts: false
  tasks:
    - name: Output path exists on B
      ansible.builtin.stat:
        path: "{{ hostvars['a'].remote_build.stdout }}/blob"
      register: on_b
      failed_when: not on_b.stat.exists
"""


def _netns() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout


def _userdata(pubkey: str, extra: str = "") -> str:
    return f"#cloud-config\nssh_authorized_keys:\n  - {pubkey}\n{extra}"


@pytest.mark.sandbox
@pytest.mark.slow
def test_ansible_apt_nix_and_remote_build(sandbox: SandboxHandle, tmp_path: Path) -> None:
    key, pubkey = ssh_keypair(tmp_path / "keys")
    # A's host key is made on the controller and injected, as our modules do; B's is
    # generated by the host itself and reported by the sandbox. Both are pinned.
    host_key, host_pub = ssh_keypair(tmp_path / "keys", "host_a", comment="root@a")
    injected = textwrap.indent(
        f"ed25519_private: |\n{textwrap.indent(host_key.read_text(), '  ')}ed25519_public: {host_pub}\n", "  "
    )
    a = sandbox.boot_host(_userdata(pubkey, f"ssh_keys:\n{injected}"), owner="test-nix-a")
    # B comes from the Debian 13 + Nix base image: its apt task finds nix-bin installed
    b = sandbox.boot_host(_userdata(pubkey), owner="test-nix-b", suite="trixie+nix")
    try:
        assert a["host_public_keys"]["ed25519"] == " ".join(host_pub.split()[:2])
        assert set(b["host_public_keys"]) == {"rsa", "ecdsa", "ed25519"}
        inventory = write_inventory(tmp_path / "inv", {"a": a, "b": b}, key)
        playbook = tmp_path / "nix.yml"
        playbook.write_text(PLAYBOOK)
        extra = {
            "nix_conf": NIX_CONF,
            "nix_expr": NIX_EXPR,
            "nonce": uuid.uuid4().hex,
            "build_key": key.read_text(),
            "build_pubkey": pubkey,
            "b_ip": b["ip"],
            "b_known_hosts": "".join(f"{b['ip']} {k}\n" for k in b["host_public_keys"].values()),
        }
        extra["result_file"] = str(tmp_path / "result.json")
        run_playbook(inventory, playbook, extra)
        result = json.loads((tmp_path / "result.json").read_text())
        assert result["local"].startswith("/nix/store/") and result["remote"].startswith("/nix/store/")
        assert result["built_on"] == [a["name"], b["name"]], result
    finally:
        sandbox.stop_host(a["name"])
        sandbox.stop_host(b["name"])
    names = {r["id"] for r in sandbox.resources() if r.get("type") == "host"}
    assert not names & {a["name"], b["name"]}


@pytest.mark.sandbox
def test_host_powering_itself_off_is_noticed(sandbox: SandboxHandle, tmp_path: Path) -> None:
    _key, pubkey = ssh_keypair(tmp_path)
    # the kind of poweroff our modules schedule through user data, only sooner
    # (a timer's default accuracy is a minute: ask for a precise one)
    poweroff = "systemd-run --on-active=2 --timer-property=AccuracySec=100ms /bin/systemctl poweroff"
    host = sandbox.boot_host(_userdata(pubkey, f"runcmd:\n  - {poweroff}\n"), owner="test-poweroff")
    deadline = time.monotonic() + 60
    seen = sandbox.host(host["name"])
    while seen["state"] != "powered-off" and time.monotonic() < deadline:
        time.sleep(0.5)
        seen = sandbox.host(host["name"])
    assert seen["state"] == "powered-off", seen
    assert seen["poweroff_noticed_at"] >= host["created_at"]
    assert host["name"] not in _netns()
    assert host["name"] not in {r["id"] for r in sandbox.resources()}


@pytest.mark.sandbox
def test_up_is_idempotent(sandbox: SandboxHandle) -> None:
    proc = sandboxctl("up", instance=sandbox.instance.number)
    assert "already up" in proc.stdout


def _scratch_instance(session: Instance) -> int:
    raw = os.environ.get("NIXFORGE_SANDBOX_SCRATCH_INSTANCE")
    if raw:
        return int(raw)
    return session.number + 100 if session.number < 100 else session.number - 100


@pytest.mark.sandbox
@pytest.mark.slow
def test_down_after_a_crash_leaves_nothing(sandbox: SandboxHandle, tmp_path: Path) -> None:
    """A second instance (so the session's stays up): boot a host, SIGKILL the daemon, down."""
    reason = sandbox_unavailable()
    assert reason is None, reason
    inst = Instance(_scratch_instance(sandbox.instance))
    sandboxctl("up", instance=inst.number)
    try:
        _key, pubkey = ssh_keypair(tmp_path)
        host = client.call(inst, "POST", "/hosts", {"owner": "test-down", "userdata": _userdata(pubkey)})
        records = [json.loads(p.read_text()) for p in inst.records_dir.glob("pid.*.json")]
        assert len(records) >= 3, records  # daemon, apt proxy, the host's nspawn
        # with the container's systemd, sshd, ... (in the instance's cgroups), start times
        # included so that a recycled PID is not mistaken for a survivor
        pids = {(r["pid"], r["start"]) for r in records}
        pids |= {(p, procs.start_time(p)) for p in procs.cgroup_pids(inst.cgroup_name)}
        os.kill(client.read_state(inst)["pid"], signal.SIGKILL)  # a crashed sandbox: nothing gets to clean up
        time.sleep(0.5)
        assert host["name"] in _netns()
    finally:
        sandboxctl("down", instance=inst.number)

    namespaces = _netns()
    assert not [ln for ln in namespaces.splitlines() if ln.startswith(inst.name_prefix)], namespaces
    mounts = Path("/proc/mounts").read_text()
    for marker in (str(inst.work_dir), str(inst.state_dir), f"/run/netns/{inst.name_prefix}"):
        assert marker not in mounts, mounts
    still = [pid for pid, start in pids if procs.alive(pid, start)]
    assert not still, f"processes of instance {inst.number} survived down: {still}"
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert f" {inst.bridge}:" not in links and f" {inst.veth_prefix}" not in links
    assert not any(d.exists() for d in procs.cgroup_dirs(inst.cgroup_name))


@pytest.mark.sandbox
def test_up_fails_when_a_provider_cannot_start() -> None:
    """A missing emulator fails `up` (tests must not pass or skip without it)."""
    spare = 199  # an instance no test session uses
    env = dict(os.environ, NIXFORGE_SANDBOX_PROVIDERS="ec2,nosuch", NIXFORGE_SANDBOX_INSTANCE=str(spare))
    try:
        proc = subprocess.run(
            [str(SANDBOXCTL), "up"], env=env, capture_output=True, text=True, check=False, timeout=600
        )
        assert proc.returncode != 0
        assert "provider nosuch: no module nfsandbox/nosuch" in proc.stdout + proc.stderr
    finally:
        subprocess.run([str(SANDBOXCTL), "down"], env=env, capture_output=True, check=False, timeout=300)


@pytest.mark.sandbox
def test_cloud_init_applies_packages_and_ssh_pwauth_and_names_what_it_ignores(
    sandbox: SandboxHandle, tmp_path: Path
) -> None:
    """Every key the collection's user data can carry is applied in the host, a user's
    `packages` included (installed with apt before the user's scripts run), and a key the
    sandbox does not apply is named in the host's cloud-init log."""
    key, pubkey = ssh_keypair(tmp_path)
    extra = "packages: [hello]\nssh_pwauth: false\nruncmd:\n  - [sh, -c, 'command -v hello > /root/hello-path']\n"
    host = sandbox.boot_host(_userdata(pubkey, extra + "snap: {commands: [x]}\n"), owner="test-cloud-init")
    known = tmp_path / "known_hosts"
    known.write_text("".join(f"{host['ip']} {k}\n" for k in host["host_public_keys"].values()))
    ssh = ["ssh", "-F", "/dev/null", "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"]
    ssh += ["-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes", f"admin@{host['ip']}"]
    try:
        # the final stage (packages, then runcmd) writes boot-finished when it is done
        while True:
            done = subprocess.run([*ssh, "test -e /var/lib/cloud/instance/boot-finished"], check=False, timeout=120)
            if done.returncode == 0:
                break
            assert done.returncode == 1, "SSH to the host failed"
            assert sandbox.host(host["name"])["state"] == "running"
            time.sleep(1)
        script = (
            "dpkg-query -W -f '${Status}\\n' hello; sudo -n cat /root/hello-path;"
            " cat /etc/ssh/sshd_config.d/50-cloud-init.conf; sudo -n cat /var/log/cloud-init.log"
        )
        out = subprocess.run([*ssh, script], capture_output=True, text=True, check=True, timeout=120).stdout
    finally:
        sandbox.stop_host(host["name"])
    lines = out.splitlines()
    assert lines[0] == "install ok installed", out
    assert lines[1] == "/usr/bin/hello", out  # runcmd ran after the packages were installed
    assert "PasswordAuthentication no" in lines, out
    assert any("snap is not supported by the sandbox; ignored" in line for line in lines), out
    assert any("packages: apt-get -y install --no-install-recommends hello exited 0" in line for line in lines), out

"""Helpers shared by the pipeline integration tests (builder_host, nix_remote_builder, playbooks).

Everything goes through the real interfaces: `sandboxctl env|resources --json`, the
sandbox control API (boot a plain host, set faults), `ansible-playbook` with the sandbox
inventory, and ssh with pinned host keys. The instance comes from
NIXFORGE_SANDBOX_INSTANCE (0 when unset).
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import signal
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml
from nfsandbox.testing import VENV_BIN, ansible_env, ansible_playbook, leftovers_of, start_playbook

ROOT = Path(__file__).resolve().parents[2]
SANDBOXCTL = ROOT / "tests" / "sandbox" / "sandboxctl"
BIN = VENV_BIN  # for the tests that start ansible-playbook themselves
INVENTORY = ROOT / "inventories" / "sandbox"


def instance() -> str:
    return os.environ.get("NIXFORGE_SANDBOX_INSTANCE", "0") or "0"


# The pre-baked builder AMI (Debian 13 with Nix installed; nfsandbox/ec2/catalog.py) that the
# sandbox inventory launches when this variable names it: tests that are not about installing
# Nix save the package installation (the most CPU a pipeline run costs here). Tests of the
# installation itself remove it from their environment (plain_debian).
BUILDER_IMAGE = {"NIXFORGE_SANDBOX_BUILDER_IMAGE": "nixforge-builder-debian-13-*"}


def plain_debian(env: dict[str, str]) -> dict[str, str]:
    """``env`` without the pre-baked image: the builder runs Debian's AMI and nix_bootstrap installs Nix."""
    return {k: v for k, v in env.items() if k not in BUILDER_IMAGE}


def sandbox_env() -> dict[str, str] | None:
    """The variables `sandboxctl env` exports, or None when the instance is not up; plus
    BUILDER_IMAGE."""
    proc = subprocess.run(
        [str(SANDBOXCTL), "env"],
        capture_output=True,
        text=True,
        env={**os.environ, "NIXFORGE_SANDBOX_INSTANCE": instance()},
        check=False,
    )
    if proc.returncode != 0:
        return None
    out: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        if line.startswith("export "):
            key, _sep, value = line[len("export ") :].partition("=")
            out[key] = shlex.split(value)[0] if value else ""
    return {**out, **BUILDER_IMAGE}


def resources() -> list[dict[str, Any]]:
    proc = subprocess.run(
        [str(SANDBOXCTL), "resources", "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, "NIXFORGE_SANDBOX_INSTANCE": instance()},
        check=True,
    )
    data = json.loads(proc.stdout)
    return data["resources"] if isinstance(data, dict) else data


def resources_of(build_id: str) -> list[dict[str, Any]]:
    """Live resources that carry the build id (tags, names), and machines left running without
    their cloud record (see nfsandbox.testing.leftovers_of)."""
    return leftovers_of(resources(), build_id)


def account_keys(env: dict[str, str], build_id: str) -> list[str]:
    """Names of the DigitalOcean account SSH keys of the build (the boot check's), straight from
    the emulator's API: `sandboxctl resources` does not list account keys."""
    answer = requests.get(
        env["DIGITALOCEAN_API_URL"].rstrip("/") + "/account/keys",
        params={"per_page": 200},
        headers={"Authorization": "Bearer " + env["DIGITALOCEAN_TOKEN"]},
        verify=env.get("DIGITALOCEAN_CA_BUNDLE") or env.get("REQUESTS_CA_BUNDLE") or True,
        timeout=30,
    )
    answer.raise_for_status()
    return [k["name"] for k in answer.json()["ssh_keys"] if k["name"].startswith("nixforge-%s-" % build_id)]


def control(env: dict[str, str], method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(  # noqa: S310 - loopback control API
        env["NIXFORGE_SANDBOX_CONTROL_URL"] + path,
        data=data,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=120) as resp:  # noqa: S310 - loopback control API
        return json.loads(resp.read() or b"null")


def set_faults(env: dict[str, str], provider: str, faults: dict[str, Any]) -> None:
    control(env, "POST", f"/faults/{provider}", faults)


# The task whose start arms a spot notice: from then on Nix builds on the builder.
BUILD_TASK = "TASK [nixforge.images.nixos_image : Build "
BUILD_INCLUDE = BUILD_TASK + "the image on the builder"


@dataclass
class SpotRun:
    """A playbook run during which EC2 sent its builder a spot interruption notice."""

    returncode: int
    lines: list[str]
    served: dict[str, Any]  # the EC2 fault record, read before the faults are cleared
    armed: bool

    @property
    def output(self) -> str:
        return "".join(self.lines)


def run_with_spot_notice(
    playbook: Path,
    env: dict[str, str],
    variables: dict[str, Any],
    notice: dict[str, Any],
    fast_retry: Path | None = None,
) -> SpotRun:
    """Run `playbook` and arm `notice` (the sandbox EC2's spot_interruption fault) when the
    image build task starts, the one moment at which the notice surely meets a running build.
    The faults are cleared afterwards whatever happens.

    `fast_retry`: a slow_module() directory whose switch is removed once the first Nix build
    task is over (the next task starts), so that a retried build (which reads the module
    anew for its fresh builder) does not wait again."""
    args = ["-i", str(INVENTORY), str(playbook), "-e", json.dumps(variables)]
    proc = start_playbook(args, env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    armed = building = False
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if fast_retry is not None and building and line.startswith("TASK ["):
                # the Nix build task is over (the next one starts): its builder had the module
                slow_module(fast_retry.parent, 0, replace=True)
                fast_retry = None
            if line.startswith(BUILD_TASK) and not armed:
                set_faults(env, "ec2", {"spot_interruption": notice})
                armed = True
            # the first Build banner may be the include around the build; the Nix build's own follows
            building = building or (line.startswith(BUILD_TASK) and not line.startswith(BUILD_INCLUDE))
        proc.wait(timeout=900)
        served = control(env, "GET", "/faults/ec2")["faults"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        set_faults(env, "ec2", {})
    return SpotRun(proc.returncode, lines, served, armed)


@dataclass
class Host:
    """A plain sandbox host booted for a test, with a login key and a known host key."""

    name: str
    ip: str
    key: Path
    host_public_key: str
    known_hosts: Path

    def ssh(self, command: str, user: str = "root", check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                "ssh",
                "-i",
                str(self.key),
                "-o",
                f"UserKnownHostsFile={self.known_hosts}",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "BatchMode=yes",
                f"{user}@{self.ip}",
                command,
            ],
            capture_output=True,
            text=True,
            check=check,
            timeout=300,
        )


def keygen(path: Path, comment: str) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)
    return Path(str(path) + ".pub").read_text().strip()


def boot_host(env: dict[str, str], tmp: Path, owner: str, suite: str = "bookworm") -> Host:
    """Boot a plain host (like one the user already has) reachable as root and admin.
    ``suite`` "trixie+nix": Debian 13 with Nix installed already (the sandbox's base image
    variant), for tests about what comes after installing Nix."""
    tmp.mkdir(parents=True, exist_ok=True)
    user_pub = keygen(tmp / "login", "test-login")
    host_pub = keygen(tmp / "hostkey", "test-host")
    userdata = "#cloud-config\n" + yaml.safe_dump(
        {
            "disable_root": False,
            "ssh_authorized_keys": [user_pub],
            "ssh_deletekeys": True,
            "ssh_genkeytypes": [],
            "ssh_keys": {"ed25519_private": (tmp / "hostkey").read_text(), "ed25519_public": host_pub},
        }
    )
    view = control(env, "POST", "/hosts", {"owner": owner, "userdata": userdata, "suite": suite})
    known = tmp / "known_hosts"
    known.write_text(f"{view['ip']} {' '.join(host_pub.split()[:2])}\n")
    return Host(name=view["name"], ip=view["ip"], key=tmp / "login", host_public_key=host_pub, known_hosts=known)


def new_id(prefix: str) -> str:
    """A build id of the test's own: tests share one sandbox, and leaks are counted by id."""
    return f"{prefix}-{secrets.token_hex(3)}"


def slow_module(tmp_path: Path, seconds: int, replace: bool = False) -> Path:
    """A NixOS module directory whose build takes `seconds` on a sandbox builder (the
    sandbox's Nix reads the marker comment), for tests that act while Nix builds."""
    module = tmp_path / "module" / "default.nix"
    module.parent.mkdir(exist_ok=replace)
    module.write_text(f"{{ ... }}: {{ }}\n# nixforge-sandbox-build-seconds: {seconds}\n")
    return module.parent


def delete_host(env: dict[str, str], host: Host) -> None:
    control(env, "DELETE", f"/hosts/{host.name}")


def playbook_env(env: dict[str, str], **extra: str) -> dict[str, str]:
    """`nfsandbox.testing.ansible_env` (state in .build/ansible-home, control sockets in a short
    directory) with the sandbox's variables; the inventory chooses the Python interpreters."""
    out = ansible_env(ROOT / ".build", {**env, **extra})
    if "ANSIBLE_PYTHON_INTERPRETER" not in {**env, **extra}:
        out.pop("ANSIBLE_PYTHON_INTERPRETER", None)
    return out


def run_playbook(
    playbook: Path | str,
    env: dict[str, str],
    extra_vars: dict[str, Any] | None = None,
    *args: str,
    timeout: int = 780,  # under pytest's 900 s per test, so that a hang shows its output
) -> subprocess.CompletedProcess:
    """The sandbox inventory's playbook through `nfsandbox.testing.ansible_playbook`."""
    cmd = ["-i", str(INVENTORY), str(playbook)]
    if extra_vars:
        cmd += ["-e", json.dumps(extra_vars)]
    return ansible_playbook(cmd + list(args), env, timeout=timeout)


def snapshot(host: Host) -> str:
    """What a host looks like from the outside: users, groups, files in the places we touch."""
    script = r"""
set -e
cat /etc/passwd /etc/group /etc/shadow | cut -d: -f1,3,4,6,7 | sort
for d in /etc/nix /etc/nixos /root /home /var/tmp /var/lib/nixforge; do
  [ -e "$d" ] || continue
  find "$d" -xdev -path '/var/tmp/systemd-private-*' -prune -o -printf '%p %m %u %s\n' | sort
done
for f in /etc/nix/nix.conf /root/.ssh/authorized_keys /home/*/.ssh/authorized_keys; do
  [ -f "$f" ] && { echo "== $f"; cat "$f"; }
done
true
"""
    return host.ssh(script).stdout


def kill_tree(pid: int) -> None:
    """SIGKILL a process and everything under it, as a dying controller loses them:
    Ansible's workers run in sessions of their own, so each process group is killed."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    groups = set()
    for member in tree:
        try:
            groups.add(os.getpgid(member))
        except ProcessLookupError:
            pass
    groups.discard(os.getpgid(0))  # never the test's own group
    for group in groups:
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass

"""Helpers for tests and scripts that use a sandbox instance (no pytest needed here).

The pytest fixtures live in tests/integration/conftest.py; test modules import these
helpers from here (`from nfsandbox.testing import ...`), not from `conftest`: with
conftest files in both tests/unit and tests/integration, the module name `conftest` is
ambiguous in one pytest run.

- `SandboxHandle`: state, env, control API calls, faults, resources, hosts.
- `ansible_env(dir)`: the one environment every ansible-playbook of the tests runs with:
  its state inside a directory (never $HOME), ssh control sockets in a short directory (the
  long-path bug), the collection of this worktree on the collections path.
- `ansible_playbook(...)` / `start_playbook(...)` (not waited for): the one place
  ansible-playbook is started; `run_playbook(...)`
  (an inventory of sandbox hosts over real SSH with pinned host keys, never
  host_key_checking=False) and `play_module(...)` (a module's tasks on localhost, their
  registered results returned) are built on it.
- `EmulatorSandbox`: what the helpers of each emulator (`metal/testing.py`, ...) share:
  the control API, its fault knobs, `resources --json` narrowed to the emulator.
- Fixtures, one per emulator (tests/integration/conftest.py offers them to every test): `ec2_sandbox`,
  `metal_sandbox`, `do_sandbox`.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import textwrap
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from . import client
from .cli import env_lines
from .config import Instance

if TYPE_CHECKING:  # metal.testing and digitalocean.testing build on EmulatorSandbox below
    from .digitalocean.testing import DOSandbox
    from .metal.testing import MetalSandbox

REPO = Path(__file__).resolve().parents[3]
SANDBOX_DIR = REPO / "tests" / "sandbox"
SANDBOXCTL = SANDBOX_DIR / "sandboxctl"
VENV_BIN = REPO / ".venv" / "bin"
# A test's deadline only bounds a hang (a bug); none is a guess at how fast the machine is.
HANG_GUARD = 120.0

# What `sandboxctl up` needs on the machine (installed by `make deps`).
REQUIRED_TOOLS = {
    "systemd-nspawn": "systemd-container",
    "debootstrap": "debootstrap",
    "apt-cacher-ng": "apt-cacher-ng",
    "zstd": "zstd",
    "ip": "iproute2",
    "unshare": "util-linux",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
}


def sandbox_unavailable() -> str | None:
    """Why the sandbox cannot run on this machine, or None."""
    if os.geteuid() != 0:
        return "the sandbox needs root (network namespaces, a bridge, mounts, containers); run the tests as root"
    missing = sorted({pkg for tool, pkg in REQUIRED_TOOLS.items() if shutil.which(tool) is None})
    if missing:
        return f"system packages missing for the sandbox: {', '.join(missing)} (run `make deps`)"
    if not (VENV_BIN / "python").exists():
        return f"no virtualenv at {VENV_BIN.parent} (run `make venv`)"
    return None


def leftovers_of(records: list[dict[str, Any]], build_id: str) -> list[dict[str, Any]]:
    """Of `sandboxctl resources --json` records, what a build left: resources that carry its id
    (tags, names), and the sandbox hosts that are machines of those resources or of an EC2
    instance or Metal device no longer listed (a machine running on after its cloud record
    went: the costly leak)."""
    tagged = [r for r in records if build_id in json.dumps(r)]
    tagged_ids = {str(r.get("id")) for r in tagged}
    listed_ids = {str(r.get("id")) for r in records if r.get("provider") != "sandbox"}
    machines = []
    for record in records:
        if record.get("type") != "host" or record in tagged:
            continue
        owner = str(record.get("owner") or "")
        cloud_id = owner[len("metal:") :] if owner.startswith("metal:") else owner
        cloud_owned = owner.startswith(("i-", "metal:"))
        if cloud_id in tagged_ids or (cloud_owned and cloud_id not in listed_ids):
            machines.append(record)
    return tagged + machines


def sandboxctl(*args: str, instance: int | None = None, check: bool = True, timeout: float = 1500):
    env = dict(os.environ)
    if instance is not None:
        env["NIXFORGE_SANDBOX_INSTANCE"] = str(instance)
    proc = subprocess.run(
        [str(SANDBOXCTL), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"sandboxctl {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@dataclass
class SandboxHandle:
    """A running sandbox instance, as tests see it."""

    instance: Instance
    started_here: bool = False

    def state(self) -> dict[str, Any]:
        return client.call(self.instance, "GET", "/status")

    def env(self) -> dict[str, str]:
        """Environment for clients (AWS_ENDPOINT_URL, REQUESTS_CA_BUNDLE, ...)."""
        return dict(env_lines(self.state()))

    def call(self, method: str, path: str, body: Any = None) -> Any:
        return client.call(self.instance, method, path, body)

    def set_faults(self, provider: str, faults: dict[str, Any]) -> None:
        self.call("POST", f"/faults/{provider}", faults)

    def reset(self) -> None:
        self.call("POST", "/reset", {})

    def resources(self) -> list[dict[str, Any]]:
        out = sandboxctl("resources", "--json", instance=self.instance.number)
        return json.loads(out.stdout)["resources"]

    def boot_host(self, userdata: str | None = None, owner: str = "pytest", **kw: Any) -> dict[str, Any]:
        return self.call("POST", "/hosts", {"owner": owner, "userdata": userdata, **kw})

    def host(self, name: str) -> dict[str, Any]:
        return self.call("GET", f"/hosts/{name}")

    @contextlib.contextmanager
    def builder_host(
        self, directory: Path, owner: str, suite: str = "bookworm"
    ) -> Iterator[tuple[dict[str, Any], Inventory]]:
        """A host that lets a fresh key in, with an inventory naming it `builder`; stopped
        at the end, and checked to be gone from `sandboxctl resources`. ``suite``: its base
        image (``trixie+nix``: Nix installed already, hosts.rootfs.VARIANTS)."""
        key, pubkey = ssh_keypair(directory / "keys")
        host = self.boot_host(f"#cloud-config\nssh_authorized_keys:\n  - {pubkey}\n", owner=owner, suite=suite)
        try:
            yield host, write_inventory(directory / "inv", {"builder": host}, key)
        finally:
            self.stop_host(host["name"])
        assert host["name"] not in {r["id"] for r in self.resources() if r.get("type") == "host"}

    def stop_host(self, name: str) -> dict[str, Any]:
        return self.call("DELETE", f"/hosts/{name}")


class EmulatorSandbox:
    """Base of an emulator's test helpers: the control API of the sandbox it runs in, its
    fault knobs (``POST /faults/<provider>``) and what ``sandboxctl resources --json``
    lists of it (``mine`` says which records are the emulator's)."""

    provider = ""
    # what the emulator publishes in the instance's state once it is up, and its name in messages
    endpoint_key = ""
    label = ""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state
        self.control_url: str = state["control_url"]
        self.instance: int = int(state["instance"])

    @classmethod
    def state_of(cls, number: int | None = None) -> tuple[dict[str, Any] | None, str]:
        """(state, reason) of the sandbox instance (default: NIXFORGE_SANDBOX_INSTANCE)."""
        return client.emulator_state(number, cls.endpoint_key, cls.provider, cls.label)

    @classmethod
    def running(cls, number: int | None = None) -> Any:
        """The helper for a running instance with this emulator, or None."""
        state = cls.state_of(number)[0]
        return cls(state) if state else None

    def control(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.control_url + path, data=data, method=method)  # noqa: S310
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - loopback control API
            return json.loads(response.read() or b"null")

    def set_faults(self, faults: dict[str, Any]) -> None:
        self.control("POST", f"/faults/{self.provider}", faults)

    def resources(self) -> list[dict[str, Any]]:
        return self.control("GET", "/resources")["resources"]

    def mine(self, resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in resources if r.get("provider") == self.provider]

    def leftovers(self) -> list[dict[str, Any]]:
        """What `sandboxctl resources --json` lists of this emulator (the check tests end with)."""
        proc = sandboxctl("resources", "--json", instance=self.instance, timeout=120)
        return self.mine(json.loads(proc.stdout)["resources"])


# -- Ansible ------------------------------------------------------------------------------


def _short_dir() -> Path:
    """A directory with a short path: ssh control sockets must fit in 108 bytes, which a
    pytest tmp_path does not leave room for. Removed when the test session ends."""
    global _SHORT_ROOT
    if _SHORT_ROOT is None:
        _SHORT_ROOT = Path(tempfile.mkdtemp(prefix="nfs-ans-", dir="/tmp"))
        atexit.register(shutil.rmtree, _SHORT_ROOT, True)
    return Path(tempfile.mkdtemp(dir=_SHORT_ROOT))


_SHORT_ROOT: Path | None = None


def ansible_env(directory: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for ansible-playbook keeping all of Ansible's state in `directory`
    (control sockets in a short-named directory of their own)."""
    home = directory / "ansible-home"
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    collections = REPO / ".build" / "collections"
    link = collections / "ansible_collections" / "nixforge" / "images"
    if not link.exists() and not link.is_symlink():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(REPO)
    env["ANSIBLE_COLLECTIONS_PATH"] = str(collections)
    if (REPO / "ansible.cfg").exists():
        env["ANSIBLE_CONFIG"] = str(REPO / "ansible.cfg")  # the project's settings (pipelining, ...)
    env.update(
        {
            "ANSIBLE_HOME": str(home),
            "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(_short_dir()),
            "ANSIBLE_RETRY_FILES_ENABLED": "false",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_PYTHON_INTERPRETER": "/usr/bin/python3",
            "ANSIBLE_HOST_KEY_CHECKING": "true",
            "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        }
    )
    env.update(extra or {})
    return env


@dataclass
class Inventory:
    path: Path
    ssh_config: Path
    known_hosts: Path
    env: dict[str, str]


def write_inventory(
    directory: Path,
    hosts: dict[str, dict[str, Any]],
    private_key: Path,
    user: str = "admin",
    group: str = "builders",
) -> Inventory:
    """Inventory + ssh config + known_hosts for sandbox hosts.

    `hosts` maps an inventory name to a host as the control API returns it (`ip`,
    `host_public_keys`). Host keys are pinned from what the sandbox reports, and ssh
    runs with its own `-F` config, so nothing of the user's ~/.ssh is read or written.
    """
    directory.mkdir(parents=True, exist_ok=True)
    known = directory / "known_hosts"
    known.write_text("".join(f"{h['ip']} {key}\n" for h in hosts.values() for key in h["host_public_keys"].values()))
    ssh_config = directory / "ssh_config"
    ssh_config.write_text(
        textwrap.dedent(
            f"""\
            Host *
                IdentityFile {private_key}
                IdentitiesOnly yes
                UserKnownHostsFile {known}
                GlobalKnownHostsFile /dev/null
                StrictHostKeyChecking yes
                BatchMode yes
                ConnectTimeout 10
            """
        )
    )
    lines = [f"[{group}]"]
    for name, h in hosts.items():
        lines.append(f"{name} ansible_host={h['ip']} ansible_user={user}")
    lines += [f"[{group}:vars]", f"ansible_ssh_common_args='-F {ssh_config}'"]
    path = directory / "inventory.ini"
    path.write_text("\n".join(lines) + "\n")
    return Inventory(path, ssh_config, known, ansible_env(directory))


def playbook_argv(
    args: list[str], verbosity: int = 0, prefix: Sequence[str] = (), bin_dir: Path = VENV_BIN
) -> list[str]:
    """The command line of ansible-playbook with `args`; `prefix` runs it under another
    command (e.g. setpriv); `bin_dir` is another ansible-core's (the version matrix)."""
    argv = [*prefix, str(bin_dir / "ansible-playbook"), *args]
    if verbosity:
        argv.append("-" + "v" * verbosity)
    return argv


def ansible_playbook(
    args: list[str],
    env: dict[str, str],
    timeout: float = 900,
    verbosity: int = 0,
    prefix: Sequence[str] = (),
    cwd: Path = REPO,
    bin_dir: Path = VENV_BIN,
) -> subprocess.CompletedProcess:
    """ansible-playbook with `args` (inventory, playbook, ...), run in the repository; `env`
    comes from `ansible_env` (directly or through `write_inventory`)."""
    argv = playbook_argv(args, verbosity, prefix, bin_dir)
    try:
        return subprocess.run(argv, env=env, cwd=str(cwd), capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        # A hang must fail with what the play had printed, not be lost to pytest-timeout.
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        tail = out[-8000:]
        raise AssertionError(f"ansible-playbook ran over {timeout:.0f} s; the end of its output:\n{tail}") from None


def start_playbook(args: list[str], env: dict[str, str], **popen: Any) -> subprocess.Popen:
    """ansible-playbook started and not waited for, for a test that signals or kills it
    while it runs (`popen`: stdout, stderr, start_new_session, ...)."""
    return subprocess.Popen(playbook_argv(args), env=env, cwd=str(REPO), **popen)


def run_playbook(
    inventory: Inventory, playbook: Path, extra_vars: dict[str, Any] | None = None, timeout: float = 900
) -> subprocess.CompletedProcess:
    """ansible-playbook against `inventory`; fails the test with the whole output."""
    args = ["-i", str(inventory.path), str(playbook)]
    if extra_vars:
        args += ["-e", json.dumps(extra_vars)]
    proc = ansible_playbook(args, inventory.env, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(
            f"ansible-playbook {playbook.name} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def play_module(
    module: str,
    tasks: list[dict[str, Any]],
    directory: Path,
    env: dict[str, str] | None = None,
    check_mode: bool = False,
    verbosity: int = 0,
    timeout: float = 900,
    extra_args: list[str] | None = None,
    unset_env: tuple[str, ...] = (),
) -> tuple[list[dict[str, Any]], subprocess.CompletedProcess]:
    """Run `module` once per entry of `tasks` (its arguments) on localhost, in one play.

    Every task runs (ignore_errors) and its registered result is saved; returns (results,
    completed process). `env` adds to `ansible_env(directory)` (endpoints, credentials),
    `unset_env` names variables to remove from it.
    """
    import sys

    import yaml

    directory.mkdir(parents=True, exist_ok=True)
    out = directory / "results.json"
    play_tasks: list[dict[str, Any]] = []
    for index, args in enumerate(tasks):
        task: dict[str, Any] = {"name": f"{module} #{index}", module: args, "register": f"r{index}"}
        task["ignore_errors"] = True
        if check_mode:
            task["check_mode"] = True
        play_tasks.append(task)
    results = "[" + ", ".join(f"r{i}" for i in range(len(tasks))) + "]"
    play_tasks.append(
        {
            "name": "Write the results",
            "ansible.builtin.copy": {"dest": str(out), "content": "{{ %s | to_json }}" % results, "mode": "0600"},
            "check_mode": False,
        }
    )
    play = [
        {
            "name": f"{module} on localhost",
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "vars": {"ansible_python_interpreter": sys.executable},
            "tasks": play_tasks,
        }
    ]
    playbook = directory / "play.yml"
    playbook.write_text(yaml.safe_dump(play, sort_keys=False))
    if out.exists():
        out.unlink()
    args = ["-i", "localhost,", str(playbook), *(extra_args or [])]
    run_env = ansible_env(directory, env)
    for name in unset_env:
        run_env.pop(name, None)
    proc = ansible_playbook(args, run_env, timeout=timeout, verbosity=verbosity)
    if not out.exists():
        raise AssertionError(f"the playbook did not finish (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return json.loads(out.read_text()), proc


def ssh_keypair(directory: Path, name: str = "id_ed25519", comment: str = "nixforge-test") -> tuple[Path, str]:
    """A fresh ed25519 key pair: (private key path, public key line)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = directory / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(key)], check=True, capture_output=True
    )
    return key, (directory / f"{name}.pub").read_text().strip()


# -- fixtures, one per emulator --------------------------------------------------------------

try:
    import pytest
except ImportError:  # pragma: no cover - scripts use the helpers above without pytest
    pytest = None  # type: ignore[assignment]


def sandbox_missing(reason: str) -> NoReturn:
    """No sandbox, or one without an emulator a test needs: fails under `make test`
    (NIXFORGE_REQUIRE_SANDBOX=1, which promises the integration tests ran), skips otherwise."""
    assert pytest is not None, "sandbox_missing() is for tests"
    if os.environ.get("NIXFORGE_REQUIRE_SANDBOX") == "1":
        pytest.fail("NIXFORGE_REQUIRE_SANDBOX=1 (make test) but " + reason, pytrace=False)
    pytest.skip(reason)


if pytest is not None:

    @pytest.fixture
    def ec2_sandbox(sandbox_instance: SandboxHandle):
        """The session's sandbox with its EC2 emulator, faults cleared before and after the test."""
        if "ec2_endpoint" not in (sandbox_instance.state().get("endpoints") or {}):
            pytest.fail("the sandbox runs without EC2: %s" % sandbox_instance.state().get("providers"))
        sandbox_instance.set_faults("ec2", {})
        yield sandbox_instance
        sandbox_instance.set_faults("ec2", {})

    @pytest.fixture(scope="module")
    def metal_sandbox(sandbox_instance: SandboxHandle) -> MetalSandbox:
        """The Metal emulator of the session's sandbox (skips, saying why, without one)."""
        from .metal.testing import MetalSandbox

        state, reason = MetalSandbox.state_of(sandbox_instance.instance.number)
        if state is None:
            sandbox_missing(reason)
        return MetalSandbox(state)

    @pytest.fixture(scope="module")
    def do_sandbox(sandbox_instance: SandboxHandle) -> DOSandbox:
        """The DigitalOcean emulator of the session's sandbox (fails or skips, saying why, without one)."""
        from .digitalocean.testing import DOSandbox

        state, reason = DOSandbox.state_of(sandbox_instance.instance.number)
        if state is None:
            sandbox_missing(reason)
        return DOSandbox(state)

"""The machines file of nix_remote_builder: Nix's field order, '-' for defaults, base64 host key.

Renders the role's own template through ansible-playbook (the client entry point) on the
controller; no sandbox needed.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJxZns8+0IEYfrIMTdAOOO9kC6YfMZGsTMtwfif0tMbr root@builder"

PLAY = """
- hosts: localhost
  connection: local
  gather_facts: false
  vars:
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
  tasks:
    - ansible.builtin.include_role:
        name: nixforge.images.nix_remote_builder
        tasks_from: client
"""


def render(tmp_path: Path, machines: list[dict]) -> list[list[str]]:
    (tmp_path / "play.yml").write_text(PLAY)
    extra = {
        "nix_remote_builder_machines": machines,
        "nix_remote_builder_client_dir": str(tmp_path / "client"),
        "nix_remote_builder_build_id": "unit",
    }
    env = dict(os.environ)
    env.setdefault("ANSIBLE_CONFIG", str(ROOT / "ansible.cfg"))
    env.setdefault("ANSIBLE_COLLECTIONS_PATH", str(ROOT / ".build" / "collections"))
    proc = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", "localhost,", str(tmp_path / "play.yml"), "-e", json.dumps(extra)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = (tmp_path / "client" / "machines").read_text()
    return [line.split() for line in text.splitlines() if line and not line.startswith("#")]


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "id_ed25519"
    path.write_text("not a real key\n")
    return path


def test_full_line_field_order(tmp_path: Path, key_file: Path) -> None:
    [fields] = render(
        tmp_path,
        [
            {
                "uri": "ssh://nixforge@198.51.100.7",
                "systems": ["aarch64-linux"],
                "ssh_key_src": str(key_file),
                "max_jobs": 8,
                "speed": 2,
                "features": ["kvm", "big-parallel"],
                "mandatory_features": ["benchmark"],
                "host_public_key": HOST_KEY,
            }
        ],
    )
    assert len(fields) == 8
    uri, system, ssh_key, max_jobs, speed, features, mandatory, pubkey = fields
    assert uri == "ssh://nixforge@198.51.100.7"
    assert system == "aarch64-linux"
    assert ssh_key == str(tmp_path / "client" / "id_ed25519")
    assert (max_jobs, speed) == ("8", "2")
    assert features == "kvm,big-parallel"
    assert mandatory == "benchmark"
    # PUBKEY: base64 of "TYPE KEY" (the comment is dropped), as Nix expects.
    assert base64.b64decode(pubkey).decode() == " ".join(HOST_KEY.split()[:2])
    assert (tmp_path / "client" / "id_ed25519").stat().st_mode & 0o777 == 0o600


def test_defaults_are_dashes_in_their_own_slots(tmp_path: Path) -> None:
    [fields] = render(
        tmp_path,
        [{"uri": "ssh://root@192.0.2.1", "systems": ["x86_64-linux", "i686-linux"], "host_public_key": HOST_KEY}],
    )
    assert len(fields) == 8
    assert fields[1] == "x86_64-linux,i686-linux"
    # SSH_KEY MAX_JOBS SPEED FEATURES MANDATORY_FEATURES default; PUBKEY last, never shifted.
    assert fields[2:7] == ["-", "-", "-", "-", "-"]
    assert base64.b64decode(fields[7]).decode().startswith("ssh-ed25519 ")


def test_known_hosts_pins_the_builder(tmp_path: Path) -> None:
    render(tmp_path, [{"uri": "ssh://root@192.0.2.1", "systems": ["x86_64-linux"], "host_public_key": HOST_KEY}])
    assert (tmp_path / "client" / "nix_known_hosts").read_text().split() == ["192.0.2.1", *HOST_KEY.split()[:2]]


def test_missing_host_key_is_refused(tmp_path: Path) -> None:
    (tmp_path / "play.yml").write_text(PLAY)
    env = dict(os.environ)
    env.setdefault("ANSIBLE_CONFIG", str(ROOT / "ansible.cfg"))
    env.setdefault("ANSIBLE_COLLECTIONS_PATH", str(ROOT / ".build" / "collections"))
    extra = {
        "nix_remote_builder_machines": [{"uri": "ssh://root@192.0.2.1"}],
        "nix_remote_builder_client_dir": str(tmp_path / "client"),
    }
    proc = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", "localhost,", str(tmp_path / "play.yml"), "-e", json.dumps(extra)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode != 0
    assert "host_public_key" in proc.stdout
    assert not (tmp_path / "client" / "machines").exists()


NIXOS_PLAY = """
- hosts: localhost
  connection: local
  gather_facts: false
  vars:
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
  tasks:
    - ansible.builtin.include_role:
        name: nixforge.images.nix_remote_builder
        tasks_from: nixos_userdata
    - ansible.builtin.copy:
        dest: "{{ out }}"
        content: "{{ nix_remote_builder_nixos_userdata }}"
        mode: "0600"
"""


def run_play(tmp_path: Path, play: str, extra: dict, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "play.yml").write_text(play)
    env = dict(os.environ)
    env.setdefault("ANSIBLE_CONFIG", str(ROOT / "ansible.cfg"))
    env.setdefault("ANSIBLE_COLLECTIONS_PATH", str(ROOT / ".build" / "collections"))
    return subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", "localhost,", str(tmp_path / "play.yml"), "-e", json.dumps(extra), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
    )


@pytest.mark.skipif(not Path("/usr/bin/nix-instantiate").exists(), reason="needs nix-instantiate (nix-bin)")
@pytest.mark.parametrize("user", ["nixforge", "root"])
@pytest.mark.parametrize("kvm", ["auto", "always", "never"])
def test_nixos_module_parses(tmp_path: Path, user: str, kvm: str) -> None:
    out = tmp_path / "module.nix"
    proc = run_play(
        tmp_path,
        NIXOS_PLAY,
        {
            "out": str(out),
            "nix_remote_builder_user": user,
            "nix_remote_builder_kvm": kvm,
            "nix_remote_builder_authorized_keys": [HOST_KEY],
            "nix_remote_builder_build_id": "unit",
        },
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = out.read_text()
    assert HOST_KEY in text
    parsed = subprocess.run(["nix-instantiate", "--parse", str(out)], capture_output=True, text=True, check=False)
    assert parsed.returncode == 0, parsed.stderr + text
    assert ('"/dev/kvm"' in text) == (kvm == "auto")


CHECK_PLAY = """
- hosts: localhost
  connection: local
  gather_facts: false
  vars:
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
  tasks:
    - ansible.builtin.include_role:
        name: nixforge.images.nix_remote_builder
"""


def test_nixos_path_in_check_mode(tmp_path: Path) -> None:
    """A host that claims to be NixOS (marker file): module + wrapper planned, rebuild not run."""
    marker = tmp_path / "NIXOS"
    marker.write_text("")
    nixos = tmp_path / "etc-nixos"
    nixos.mkdir()
    proc = run_play(
        tmp_path,
        CHECK_PLAY,
        {
            "nix_remote_builder_nixos_marker": str(marker),
            "nix_remote_builder_nixos_module_path": str(nixos / "nixforge-remote-builder.nix"),
            "nix_remote_builder_nixos_config_path": str(nixos / "nixforge-configuration.nix"),
            "nix_remote_builder_authorized_keys": [HOST_KEY],
            "nix_remote_builder_build_id": "unit",
        },
        "--check",
        "--diff",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Write the remote-builder NixOS module" in proc.stdout
    assert "nix.settings.trusted-users" in proc.stdout  # the diff of the planned module
    assert "Switch to the configuration with the remote-builder module" in proc.stdout
    assert list(nixos.iterdir()) == []  # check mode wrote nothing

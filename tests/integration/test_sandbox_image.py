"""The sandbox image definition (`nixforge:sandbox`) builds real, bootable images.

Real, not mocked: a sandbox builder host (Debian 13 with Nix, the pre-baked base image)
bootstrapped with nix_bootstrap builds the images through the nixos_image role (exactly
the code path of a user's flake); the artifacts
fetched to the controller are then inspected with the file system tools' own checkers
(sfdisk, fsck.vfat, e2fsck, debugfs) and the DigitalOcean image is booted by hand under
QEMU from its own disk (SeaBIOS -> GRUB in the MBR gap -> Debian's cloud kernel), with a
metadata service on 169.254.169.254 in a network namespace of the test's own: it takes
the SSH key given, installs the host key given in user data (pinned by the client), and
answers SSH as root. An image built with `# nixforge-sandbox-break-init: true` reaches
its kernel and never answers SSH. Everything started is stopped by PID.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import secrets
import struct
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from _image_boot import boot, choose_accel, metadata_namespace, metadata_server, write_metadata
from nfsandbox.metal.testing import collection_on_path
from nfsandbox.testing import Inventory, SandboxHandle, run_playbook, ssh_keypair

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

# Two 5 MB B2 parts and a bit: the sandbox inventory's part size makes >= 3 parts of it.
MIN_COMPRESSED = 10_500_000

BOOTSTRAP_VARS = {
    "nix_bootstrap_substituters": [],
    "nix_bootstrap_sandbox": False,
    "nix_bootstrap_binfmt_register": False,
    "nix_bootstrap_build_systems": ["aarch64-linux"],
}

BOOTSTRAP = """\
- name: Bootstrap Nix
  hosts: builders
  gather_facts: false
  become: true
  roles:
    - nixforge.images.nix_bootstrap
"""

BUILD = """\
- name: Build an image
  hosts: builders
  gather_facts: false
  become: true
  tasks:
    - name: Run nixos_image
      ansible.builtin.include_role:
        name: nixforge.images.nixos_image
    - name: Save the result
      ansible.builtin.copy:
        content: "{{ nixos_image_result | to_json }}"
        dest: "{{ result_file }}"
        mode: "0644"
      delegate_to: localhost
      become: false
"""

TOKEN = secrets.token_hex(4)
MODULE = '{ ... }: { networking.hostName = "sandbox-image-%s"; }\n' % TOKEN
BROKEN = '# nixforge-sandbox-break-init: true\n{ ... }: { networking.hostName = "broken-%s"; }\n' % TOKEN


@dataclass
class Built:
    path: Path
    module: str
    result: dict[str, Any]


@pytest.fixture(scope="module")
def images(sandbox_instance: SandboxHandle, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Built]:
    """The SD image, the DigitalOcean image and a DigitalOcean image whose init fails,
    each built on one sandbox builder through nix_bootstrap + nixos_image."""
    directory = tmp_path_factory.mktemp("sandbox-image")
    (directory / "bootstrap.yml").write_text(BOOTSTRAP)
    (directory / "build.yml").write_text(BUILD)
    built = {}
    # the images are under test here, not installing Nix (test_roles_build.py): a host that has it
    with sandbox_instance.builder_host(directory, "test-sandbox-image", suite="trixie+nix") as (_host, inventory):
        run_playbook(inventory, directory / "bootstrap.yml", BOOTSTRAP_VARS)
        for name, kind, module in (("sd", "sd-aarch64", MODULE), ("do", "do", MODULE), ("broken", "do", BROKEN)):
            built[name] = _build(inventory, directory, name, kind, module)
    return built


def _build(inventory: Inventory, directory: Path, name: str, kind: str, module: str) -> Built:
    module_file = directory / name / "module.nix"
    module_file.parent.mkdir()
    module_file.write_text(module)
    result_file = directory / name / "result.json"
    extra = {
        "nixos_image_kind": kind,
        "nixos_image_flake": "nixforge:sandbox",
        "nixos_image_module": str(module_file),
        "nixos_image_dest_dir": str(directory / name / "out"),
        "result_file": str(result_file),
    }
    run_playbook(inventory, directory / "build.yml", extra)
    result = json.loads(result_file.read_text())
    return Built(Path(result["path"]), module, result)


def tool(*argv: str, ok: tuple[int, ...] = (0,)) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    assert proc.returncode in ok, f"{argv}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def debugfs_cat(image: Path, path: str) -> str:
    return subprocess.run(
        ["debugfs", "-R", f"cat {path}", str(image)], capture_output=True, text=True, check=True
    ).stdout


def module_line(module: str) -> str:
    """The marker line the image holds for the module (the role names it default.nix)."""
    return "module: default.nix sha256:%s" % hashlib.sha256(module.encode()).hexdigest()


def partitions(raw: Path, tmp_path: Path) -> tuple[dict[str, Any], list[Path]]:
    """sfdisk's view of the disk and each partition cut out to a file."""
    table = json.loads(tool("sfdisk", "--json", str(raw)))["partitiontable"]
    files = []
    with raw.open("rb") as disk:
        for index, part in enumerate(table["partitions"], start=1):
            disk.seek(part["start"] * 512)
            files.append(tmp_path / f"part{index}.img")
            files[-1].write_bytes(disk.read(part["size"] * 512))
    return table, files


def test_sd_image_has_the_sd_image_nix_layout(images: dict[str, Built], tmp_path: Path) -> None:
    sd = images["sd"]
    assert sd.path.name.endswith(".img.zst") and sd.path.stat().st_size > MIN_COMPRESSED
    raw = tmp_path / "sd.img"
    tool("zstd", "-q", "-d", str(sd.path), "-o", str(raw))
    table, (firmware, root) = partitions(raw, tmp_path)
    assert table["label"] == "dos" and table["id"] == "0x2178694e"
    first, second = table["partitions"]
    assert first["type"] == "c" and not first.get("bootable") and first["start"] == 8 * 2048
    assert second["type"] == "83" and second.get("bootable") is True
    assert second["start"] == first["start"] + first["size"]
    # Both file systems pass their own checkers, read-only.
    tool("fsck.vfat", "-n", str(firmware))
    tool("e2fsck", "-fn", str(root))
    assert firmware.read_bytes()[0x52:0x5A] == b"FAT32   "  # the FAT32 boot sector's type field
    assert tool("fatlabel", str(firmware)).strip() == "FIRMWARE"
    assert tool("e2label", str(root)).strip() == "NIXOS_SD"
    extlinux = debugfs_cat(root, "/boot/extlinux/extlinux.conf")
    assert "DEFAULT nixos-default" in extlinux
    kernel = re.search(r"^\s*LINUX \.\./(\S+)$", extlinux, re.MULTILINE)
    assert kernel, extlinux
    assert "Type: regular" in tool("debugfs", "-R", f"stat /boot/{kernel.group(1)}", str(root))
    marker = debugfs_cat(root, "/etc/nixforge-image").splitlines()
    assert marker[0] == "nixforge sandbox image (sd)" and module_line(sd.module) in marker


def _disk(built: Built, tmp_path: Path) -> Path:
    """The qcow2 inside nixos.qcow2.gz, checked: gzip, qcow2 header, MBR with GRUB."""
    assert built.path.name == "nixos.qcow2.gz" and built.path.stat().st_size > MIN_COMPRESSED
    disk = tmp_path / f"{built.path.parent.parent.name}.qcow2"
    with gzip.open(built.path) as src, disk.open("wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
    header = disk.read_bytes()[:72]
    assert header[:4] == b"QFI\xfb" and struct.unpack_from(">I", header, 4)[0] in (2, 3)
    return disk


def test_do_image_boots_from_its_disk_and_answers_ssh(images: dict[str, Built], tmp_path: Path) -> None:
    """Boot by hand: the key given is let in, the host key given in user data is the one
    the server shows (pinned, StrictHostKeyChecking=yes), and the image is the one built."""
    collection_on_path()
    from ansible_collections.nixforge.images.plugins.module_utils._base._sshkeys import HostKey
    from ansible_collections.nixforge.images.plugins.module_utils._base._userdata import host_key_config, render

    disk = _disk(images["do"], tmp_path)
    key, public = ssh_keypair(tmp_path / "keys", "id_login")
    host_key, host_public = ssh_keypair(tmp_path / "keys", "ssh_host_ed25519_key", "root@droplet")
    user_data = render(host_key_config(HostKey("ed25519", host_key.read_text(), host_public)))
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("[127.0.0.1]:2222 %s\n" % " ".join(host_public.split()[:2]))
    hostname = "droplet-" + TOKEN
    root = write_metadata(tmp_path / "metadata", public + "\n", hostname, user_data)
    with metadata_namespace() as ns, metadata_server(ns, root):
        accel = choose_accel(ns, disk, tmp_path, r"Linux version")
        with boot(ns, disk, tmp_path / "console.log", accel) as guest:
            guest.wait_for(r"^nixforge-sandbox: ssh up", r"^nixforge-sandbox: boot failed")
            console = guest.text()
            assert "nixforge-sandbox: ssh up" in console, console[-4000:]
            # GRUB's menu on the serial console: the disk booted through its own boot loader.
            assert "Booting `NixOS (nixforge sandbox)'" in console and "ssh host key: from user-data" in console
            login = guest.ssh(key, known_hosts, "cat /etc/nixforge-image; hostname; uname -r; cat /proc/cmdline")
            assert login.returncode == 0, login.stderr
            lines = login.stdout.splitlines()
            assert lines[0] == "nixforge sandbox image (do)" and module_line(images["do"].module) in lines, lines
            assert hostname in lines and any(line.endswith("-cloud-amd64") for line in lines)
            assert "root=LABEL=nixos" in lines[-1] and "console=ttyS0" in lines[-1]
            # Only the key given gets in.
            stranger, _stranger_pub = ssh_keypair(tmp_path / "keys", "id_stranger")
            assert guest.ssh(stranger, known_hosts, "true").returncode == 255


def test_break_init_image_never_answers_ssh(images: dict[str, Built], tmp_path: Path) -> None:
    """The kernel boots, init fails (the console says so, then the kernel stops): no SSH,
    ever. The wait ends at the failure line, not after a guessed time."""
    disk = _disk(images["broken"], tmp_path)
    key, public = ssh_keypair(tmp_path / "keys", "id_login")
    root = write_metadata(tmp_path / "metadata", public + "\n", "broken", "#cloud-config\n{}\n")
    with metadata_namespace() as ns, metadata_server(ns, root):
        with boot(ns, disk, tmp_path / "console.log", "tcg") as guest:
            guest.wait_for(r"Kernel panic - not syncing: Attempted to kill init", r"nixforge-sandbox: ssh up")
            console = guest.text()
            assert "nixforge-sandbox: init failed on purpose" in console, console[-4000:]
            assert "nixforge-sandbox: ssh up" not in console and "nixforge-sandbox: network" not in console
            # The kernel has stopped: nothing in the guest can answer port 22. (The outcome
            # does not depend on the bound: a halted guest never answers, fast or slow.)
            login = guest.ssh(key, tmp_path / "no_known_hosts", "true", connect_timeout=10)
            assert login.returncode == 255 and "SSH-" not in login.stdout


def test_images_differ_by_module_and_are_incompressible(images: dict[str, Built]) -> None:
    """A different module gives a different image; the images' size is their content
    (they do not shrink further), so the B2 upload really takes >= 3 parts."""
    assert images["do"].result["sha256"] != images["broken"].result["sha256"]
    for built in images.values():
        data = built.path.read_bytes()
        assert len(zlib.compress(data[: 4 << 20], 1)) > 0.9 * (4 << 20)

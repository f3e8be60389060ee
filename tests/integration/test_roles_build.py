"""The build roles against a real sandbox host: nix_bootstrap, then nixos_image.

Real, not mocked: one Debian host booted by the sandbox (instance from
NIXFORGE_SANDBOX_INSTANCE), reached by ansible-playbook over SSH with pinned host keys as
`admin` with sudo; Nix from Debian's nix-bin (multi-user, nix-daemon); the sandbox image
definitions (`nixforge:sandbox`) built through exactly the role code path a real flake
takes; artifacts fetched to the controller and checked byte for byte.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import struct
import subprocess
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from nfsandbox.testing import Inventory, SandboxHandle, ansible_playbook, run_playbook

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

# What the sandbox needs in nix.conf (see inventories/sandbox): no network, so no binary
# cache; the sandbox expressions use the host's own tools, so no Nix build sandbox; the
# hosts are containers, so binfmt handlers are the machine's business. Everything else
# is the roles' defaults (multi-user Nix with nix-daemon, Debian's nix-bin).
BOOTSTRAP_VARS = {
    "nix_bootstrap_substituters": [],
    "nix_bootstrap_sandbox": False,
    "nix_bootstrap_binfmt_register": False,
    "nix_bootstrap_build_systems": ["aarch64-linux"],
    "nix_bootstrap_daemon_users": ["admin"],
}

BOOTSTRAP = """\
- name: Bootstrap Nix
  hosts: builders
  gather_facts: false
  become: true
  tasks:
    - name: Run nix_bootstrap
      ansible.builtin.include_role:
        name: nixforge.images.nix_bootstrap
    - name: Save its result
      ansible.builtin.copy:
        content: "{{ nix_bootstrap_result | to_json }}"
        dest: "{{ result_file }}"
        mode: "0644"
      delegate_to: localhost
      become: false
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

FETCH = """\
- name: Fetch a file
  hosts: builders
  gather_facts: false
  become: true
  tasks:
    - name: Run the fetch entry point
      ansible.builtin.include_role:
        name: nixforge.images.nixos_image
        tasks_from: fetch
    - name: Save the result
      ansible.builtin.copy:
        content: "{{ nixos_image_fetch_result | to_json }}"
        dest: "{{ result_file }}"
        mode: "0644"
      delegate_to: localhost
      become: false
"""

# A flake that fails the way real builds fail: output, then an error and a non-zero exit.
FAILING_FLAKE = """\
{
  outputs = { self }: {
    nixosConfigurations.sd-aarch64.config.system.build.sdImage = builtins.derivation {
      name = "failing-image";
      system = "aarch64-linux";
      builder = "/bin/sh";
      args = [ "-c" ''
        echo copying the closure; echo writing the partition table
        echo 'error: No space left on device (simulated)' >&2; exit 7
      '' ];
      PATH = "/usr/bin:/bin";
    };
  };
}
"""

# Just enough of nixpkgs (lib.nixosSystem and the three module files the shipped flakes
# import) to evaluate the real definitions offline: the "image" is a JSON report of the
# system, the modules in order and the merged settings, under the artifact's real name.
STUB_NIXPKGS = {
    "flake.nix": """\
{
  outputs = { self }:
    let
      lib = {
        optional = cond: x: if cond then [ x ] else [ ];
        mkDefault = x: x;
        recursiveUpdate = a: b:
          a // builtins.mapAttrs (n: v:
            if builtins.isAttrs v && builtins.isAttrs (a.${n} or null) then lib.recursiveUpdate a.${n} v else v) b;
        nixosSystem = { system, modules }:
          let
            args = { config = { }; inherit lib; pkgs = { }; modulesPath = "${self}/nixos/modules"; };
            load = m: let v = if builtins.isAttrs m then m else import m; in
              if builtins.isFunction v then v args else v;
            names = map (m: if builtins.isAttrs m then "<inline>" else baseNameOf (toString m)) modules;
            settings = builtins.foldl' lib.recursiveUpdate { } (map load modules);
            report = builtins.toJSON { inherit system names settings; };
            image = dir: file: builtins.derivation {
              name = "stub-image";
              inherit system report;
              builder = "/bin/sh";
              args = [ "-c" "mkdir -p $out/${dir} && printf '%s' \\"$report\\" > $out/${dir}/${file}" ];
              PATH = "/usr/bin:/bin";
            };
          in {
            config.system.build.sdImage = image "sd-image" "nixos-image-sd-card-stub-aarch64-linux.img.zst";
            config.system.build.digitalOceanImage = image "." "nixos-image-digital-ocean-stub-x86_64-linux.qcow2.gz";
          };
      };
    in { inherit lib; };
}
""",
    "nixos/modules/installer/sd-card/sd-image-aarch64.nix": "{ ... }: { sdImage.firmwareSize = 30; }\n",
    "nixos/modules/installer/sd-card/sd-image-aarch64-installer.nix": "{ ... }: { sdImage.installer = true; }\n",
    "nixos/modules/virtualisation/digital-ocean-image.nix": (
        "{ ... }: { virtualisation.digitalOceanImage.diskSize = 4096; }\n"
    ),
}
STUB_ON_BUILDER = "/var/tmp/nixforge-stub-nixpkgs"

MODULE = '{ lib, ... }: {\n  networking.hostName = lib.mkDefault "pi";\n  services.openssh.enable = true;\n}\n'


@dataclass
class Builder:
    host: dict[str, Any]
    inventory: Inventory
    directory: Path
    playbooks: Path

    def ssh(self, command: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["ssh", "-F", str(self.inventory.ssh_config), f"admin@{self.host['ip']}", command],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def play(self, playbook: str, extra: dict[str, Any], check: bool = True) -> subprocess.CompletedProcess:
        path = self.playbooks / f"{playbook}.yml"
        if check:
            return run_playbook(self.inventory, path, extra)
        return ansible_playbook(
            ["-i", str(self.inventory.path), str(path), "-e", json.dumps(extra)], self.inventory.env
        )


def recap_changed(output: str) -> int:
    match = re.search(r"^builder\s+:.*?changed=(\d+)", output, re.MULTILINE)
    assert match, output
    return int(match.group(1))


@pytest.fixture(scope="module")
def builder(sandbox_instance: SandboxHandle, tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("roles-build")
    with sandbox_instance.builder_host(directory, "test-roles-build") as (host, inventory):
        playbooks = directory / "playbooks"
        playbooks.mkdir()
        for name, text in {"bootstrap": BOOTSTRAP, "build": BUILD, "fetch": FETCH}.items():
            (playbooks / f"{name}.yml").write_text(text)
        yield Builder(host, inventory, directory, playbooks)


@pytest.fixture(scope="module")
def bootstrapped(builder: Builder) -> dict[str, Any]:
    """nix_bootstrap run twice; the outputs and the role's result fact."""
    result_file = builder.directory / "bootstrap.json"
    first = builder.play("bootstrap", {**BOOTSTRAP_VARS, "result_file": str(result_file)})
    second = builder.play("bootstrap", {**BOOTSTRAP_VARS, "result_file": str(result_file)})
    return {"first": first.stdout, "second": second.stdout, "result": json.loads(result_file.read_text())}


def test_nix_bootstrap_installs_tunes_and_is_idempotent(builder: Builder, bootstrapped: dict[str, Any]) -> None:
    assert recap_changed(bootstrapped["first"]) > 0
    assert recap_changed(bootstrapped["second"]) == 0, bootstrapped["second"]
    result = bootstrapped["result"]
    assert result["install_method"] == "debian" and result["multi_user"] is True
    assert result["system"] == "x86_64-linux" and result["extra_platforms"] == ["aarch64-linux"]
    assert re.match(r"^2\.\d+", result["nix_version"]), result
    conf = builder.ssh("cat /etc/nix/nix.conf").stdout
    assert "experimental-features = nix-command flakes" in conf
    assert f"max-jobs = {result['max_jobs']}" in conf and f"cores = {result['cores']}" in conf
    assert re.search(r"^substituters = *$", conf, re.MULTILINE) and "sandbox = false" in conf
    assert "extra-platforms = aarch64-linux" in conf and "build-users-group = nixbld" in conf
    daemon = builder.ssh("systemctl is-active nix-daemon.service; NIX_REMOTE=daemon nix-store -q --hash /nix/store")
    assert daemon.stdout.splitlines()[0] == "active", daemon.stdout + daemon.stderr


def _mbr_partitions(sector: bytes) -> list[tuple[int, int, int, int]]:
    assert sector[510:512] == b"\x55\xaa", "no MBR signature at 510"
    entries = []
    for index in range(4):
        boot, ptype, start, count = struct.unpack_from("<B3xB3xII", sector, 446 + 16 * index)
        if ptype:
            entries.append((boot, ptype, start, count))
    return entries


def _qcow2_first_sector(data: bytes) -> bytes:
    """Guest sector 0 of a qcow2 image, read through its L1 and L2 tables."""
    magic, version = struct.unpack_from(">4sI", data, 0)
    assert magic == b"QFI\xfb" and version in (2, 3)
    cluster_bits = struct.unpack_from(">I", data, 20)[0]
    l1_offset = struct.unpack_from(">Q", data, 40)[0]
    offset_mask = ((1 << 56) - 1) & ~((1 << 9) - 1)
    l2_offset = struct.unpack_from(">Q", data, l1_offset)[0] & offset_mask
    cluster = struct.unpack_from(">Q", data, l2_offset)[0] & offset_mask
    assert cluster and cluster % (1 << cluster_bits) == 0
    return data[cluster : cluster + 512]


def test_build_and_fetch_the_sandbox_sd_and_do_images(builder: Builder, bootstrapped: dict[str, Any]) -> None:
    module = builder.directory / "sd-image.nix"
    module.write_text(MODULE)
    dest = builder.directory / "artifacts"
    results = {}
    for kind in ("sd-aarch64", "do"):
        result_file = builder.directory / f"build-{kind}.json"
        out = builder.play(
            "build",
            {
                "nixos_image_kind": kind,
                "nixos_image_flake": "nixforge:sandbox",
                "nixos_image_module": str(module),
                "nixos_image_dest_dir": str(dest),
                "result_file": str(result_file),
            },
        )
        assert "Run nixos_image" in out.stdout
        results[kind] = json.loads(result_file.read_text())

    for kind, result in results.items():
        path = Path(result["path"])
        data = path.read_bytes()
        # sha256 on the controller = what the role reports = what the builder computes.
        assert hashlib.sha256(data).hexdigest() == result["sha256"] and len(data) == result["size"]
        on_builder = builder.ssh(f"sha256sum {result['builder_path']}").stdout.split()[0]
        assert on_builder == result["sha256"]
        assert result["builder_path"].startswith("/nix/store/") and result["builder"] == "builder"
        assert result["build_seconds"] > 0 and result["fetch_seconds"] > 0 and result["fetch_method"] == "ssh"
        assert result["kind"] == kind and result["build_method"] == "nix"

    sd = results["sd-aarch64"]
    assert re.fullmatch(r".*/sd-image/[^/]+\.img\.zst", sd["builder_path"]) and sd["name"].endswith(".img.zst")
    raw = subprocess.run(["zstd", "-dc", sd["path"]], capture_output=True, check=True).stdout
    parts = _mbr_partitions(raw[:512])
    assert [p[1] for p in parts] == [0x0C, 0x83] and parts[1][0] == 0x80  # FAT32 firmware, bootable root
    assert parts[1][2] * 512 + parts[1][3] * 512 <= len(raw)
    # The user's module went through the role to the build.
    assert hashlib.sha256(MODULE.encode()).hexdigest().encode() in raw

    do = results["do"]
    assert Path(do["path"]).name == "nixos.qcow2.gz" and do["attribute"].endswith("digitalOceanImage")
    qcow2 = gzip.decompress(Path(do["path"]).read_bytes())
    assert [p[1] for p in _mbr_partitions(_qcow2_first_sector(qcow2))] == [0x83]

    # Nothing of ours is left on the builder beyond the Nix store.
    left = builder.ssh("sudo ls -A /var/tmp/nixforge-image /root/.ansible_async 2>&1; true").stdout
    assert "No such file" in left and not re.search(r"^j\d+", left, re.MULTILINE), left
    assert sorted(p.name for p in dest.iterdir()) == ["nixos-sd-image-sandbox-aarch64-linux.img.zst", "nixos.qcow2.gz"]


def test_failing_build_shows_the_log_tail_and_cleans_up(builder: Builder, bootstrapped: dict[str, Any]) -> None:
    flake = builder.directory / "failing"
    flake.mkdir()
    (flake / "flake.nix").write_text(FAILING_FLAKE)
    dest = builder.directory / "failed-artifacts"
    proc = builder.play(
        "build",
        {
            "nixos_image_flake": str(flake),
            "nixos_image_dest_dir": str(dest),
            "result_file": str(builder.directory / "never.json"),
        },
        check=False,
    )
    out = proc.stdout
    assert proc.returncode != 0
    assert "The image build failed on builder: the build command exited with code 1" in out, out
    assert "error: No space left on device (simulated)" in out
    assert "writing the partition table" in out and "failed with exit code 7" in out
    log = dest / "nixos-image-sd-aarch64-builder.build.log"
    assert f"The whole log: {log}" in out and "No space left on device" in log.read_text()
    assert not (builder.directory / "never.json").exists()
    left = builder.ssh("ls -A /var/tmp/nixforge-image 2>&1; true").stdout
    assert "No such file" in left


def test_shipped_real_flakes_wire_nixpkgs_and_the_module(builder: Builder, bootstrapped: dict[str, Any]) -> None:
    """The real SD and DO definitions (their flake.nix and flake.lock as shipped), built
    through the role with nixpkgs overridden by a stub: right system, nixpkgs' image
    module, the image settings, then the user's module, and the artifact found by its
    real name (the DO one in the newer nixos-image-digital-ocean-*.qcow2.gz form)."""
    stub = builder.directory / "stub-nixpkgs"
    for rel, text in STUB_NIXPKGS.items():
        (stub / rel).parent.mkdir(parents=True, exist_ok=True)
        (stub / rel).write_text(text)
    tar = subprocess.run(["tar", "-C", str(stub), "-cf", "-", "."], capture_output=True, check=True).stdout
    copied = subprocess.run(
        [
            "ssh",
            "-F",
            str(builder.inventory.ssh_config),
            f"admin@{builder.host['ip']}",
            f"rm -rf {STUB_ON_BUILDER} && mkdir -p {STUB_ON_BUILDER} && tar -C {STUB_ON_BUILDER} -xf -",
        ],
        input=tar,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert copied.returncode == 0, copied.stderr
    module_dir = builder.directory / "module-dir"
    module_dir.mkdir()
    (module_dir / "default.nix").write_text('{ ... }: { imports = [ ./ssh.nix ]; networking.hostName = "pi"; }\n')
    (module_dir / "ssh.nix").write_text("{ ... }: { services.openssh.enable = true; }\n")
    expected = {
        "sd-aarch64": (
            "aarch64-linux",
            "sd-image-aarch64.nix",
            {"sdImage": {"compressImage": True, "firmwareSize": 30}},
        ),
        "do": (
            "x86_64-linux",
            "digital-ocean-image.nix",
            {"virtualisation": {"digitalOceanImage": {"compressionMethod": "gzip", "diskSize": 4096}}},
        ),
    }
    try:
        for kind, (system, nixpkgs_module, settings) in expected.items():
            result_file = builder.directory / f"real-{kind}.json"
            builder.play(
                "build",
                {
                    "nixos_image_kind": kind,
                    "nixos_image_module": str(module_dir),
                    "nixos_image_nix_args": [
                        "--override-input",
                        "nixpkgs",
                        f"path:{STUB_ON_BUILDER}",
                        "--no-write-lock-file",
                    ],
                    "nixos_image_dest_dir": str(builder.directory / "real-artifacts"),
                    # the stub nixpkgs writes a JSON report, not a disk: nothing to check
                    "nixos_image_sd_check": False,
                    "result_file": str(result_file),
                },
            )
            result = json.loads(result_file.read_text())
            assert result["flake"].endswith(
                "/files/images/" + {"sd-aarch64": "sd-aarch64", "do": "digital-ocean"}[kind]
            )
            report = json.loads(Path(result["path"]).read_text())
            assert report["system"] == system
            assert report["names"] == [nixpkgs_module, "<inline>", "nixforge-module"], report
            for key, value in settings.items():
                assert report["settings"][key] == value, report
            assert report["settings"]["networking"] == {"hostName": "pi"}
        assert Path(result["path"]).name == "nixos-image-digital-ocean-stub-x86_64-linux.qcow2.gz"
    finally:
        builder.ssh(f"rm -rf {STUB_ON_BUILDER}")


@pytest.mark.parametrize("method", ["ssh", "rsync"])
def test_fetch_resumes_an_interrupted_transfer(builder: Builder, bootstrapped: dict[str, Any], method: str) -> None:
    """A transfer cut off part way goes on from where it stopped, and the result checks out."""
    size = 48 * 1024 * 1024
    src = f"/var/tmp/nixforge-resume-{method}.bin"
    data = os.urandom(size)
    sha = hashlib.sha256(data).hexdigest()
    made = subprocess.run(
        ["ssh", "-F", str(builder.inventory.ssh_config), f"admin@{builder.host['ip']}", f"cat > {src}"],
        input=data,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    dest = builder.directory / f"resume-{method}"
    dest.mkdir()
    part = dest / ".image.bin.part"
    # The fetch resumes only for the same source file: path, size and modification time.
    stat = builder.ssh(f"python3 -c 'import os, sys; print(os.stat(sys.argv[1]).st_mtime_ns)' {src}")
    mtime_ns = int(stat.stdout.strip())
    chunk = 4 * 1024 * 1024
    identity = {"src": src, "size": size, "mtime_ns": mtime_ns, "chunk": chunk, "method": method}
    if method == "rsync":
        # rsync --append continues after the bytes already there.
        part.write_bytes(data[: 20 * 1024 * 1024])
        state = dict(identity, streams=1, done=[5])
        resumed = 20 * 1024 * 1024
    else:
        # Two streams stopped part way, as the fetch leaves them when cut off: stream i
        # holds chunks i, i+2, ...; everything beyond each stream's progress is garbage
        # that must be overwritten.
        done = [3, 1]  # chunks 0, 2, 4 and chunk 1
        blob = bytearray(b"\xa5" * size)
        for index, count in enumerate(done):
            for k in range(count):
                offset = (index + 2 * k) * chunk
                blob[offset : offset + chunk] = data[offset : offset + chunk]
        part.write_bytes(bytes(blob))
        state = dict(identity, streams=2, done=done)
        resumed = sum(done) * chunk
    (dest / (part.name + ".state")).write_text(json.dumps(state))
    result_file = builder.directory / f"fetch-{method}.json"
    builder.play(
        "fetch",
        {
            "nixos_image_fetch_src": src,
            "nixos_image_dest_dir": str(dest),
            "nixos_image_dest_name": "image.bin",
            "nixos_image_fetch_method": method,
            "nixos_image_fetch_streams": 2,
            "result_file": str(result_file),
        },
    )
    result = json.loads(result_file.read_text())
    builder.ssh(f"rm -f {src}")
    assert result["resumed_bytes"] == resumed and result["sha256"] == sha and result["method"] == method
    assert hashlib.sha256((dest / "image.bin").read_bytes()).hexdigest() == sha
    assert sorted(p.name for p in dest.iterdir()) == ["image.bin"]  # no part, state or log left


def test_bad_inputs_fail_early_with_the_variable_named(builder: Builder, bootstrapped: dict[str, Any]) -> None:
    cases = [
        ({"nixos_image_flake": str(builder.directory / "nowhere")}, "has no flake.nix on the controller"),
        ({"nixos_image_flake": "nixforge:sandbox", "nixos_image_module": "/nonexistent.nix"}, "nixos_image_module"),
        ({"nixos_image_flake": "github:example/flake", "nixos_image_module": str(builder.directory)}, "only works"),
        ({"nixos_image_kind": "iso"}, "nixos_image_kind"),
    ]
    for number, (extra, needle) in enumerate(cases):
        work_dir = f"/var/tmp/nixforge-bad-input-{number}"
        variables = {"result_file": str(builder.directory / "never.json"), "nixos_image_work_dir": work_dir, **extra}
        proc = builder.play("build", variables, check=False)
        assert proc.returncode != 0 and needle in proc.stdout, textwrap.shorten(proc.stdout, 4000)
        # Nothing ran on the builder: the role's argument spec, or the build step's input check on
        # the controller, fails before the definition is copied (no work dir, no cleanup task there).
        assert any(
            f"TASK [nixforge.images.nixos_image : {step}" in proc.stdout
            for step in ("Build the image ", "Validating arguments against arg spec")
        ), proc.stdout
        cleanup = re.search(r"nixos_image : Remove the work directory\][^\n]*\n(\w+)", proc.stdout)
        assert cleanup is None or cleanup.group(1) == "skipping", proc.stdout
        assert "Copying the image definition" not in proc.stdout
        looked = builder.ssh(f"test ! -e {work_dir} && echo absent")
        assert looked.stdout.strip() == "absent", (looked.stdout, looked.stderr)

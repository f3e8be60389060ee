"""nix_bootstrap's plan: the checks, the settings and the one package list."""

from __future__ import annotations

import shlex
import subprocess

import pytest
from ansible_collections.nixforge.images.plugins.plugin_utils.bootstrap import (
    HostError,
    parse_probe,
    plan,
    probe_command,
)

DEBIAN12 = {
    "arch": "x86_64",
    "vcpus": "8",
    "mem_kb": str(8 * 1024 * 1024),
    "os_id": "debian",
    "os_like": "",
    "os_version": "12",
    "init": "systemd",
    "apt_lists": "4",
    "kvm_group": "",
    "upstream_nix": "",
    "binfmt": "register status",
}
OPTS = {"install_method": "debian", "multi_user": True, "build_systems": [], "qemu": True, "apt_cache_valid_time": 3600}


def test_probe_runs_here_and_parses() -> None:
    out = subprocess.run(shlex.split(probe_command()), capture_output=True, text=True, check=True).stdout
    facts = parse_probe(out)
    assert facts["arch"] and int(facts["vcpus"]) >= 1 and int(facts["mem_kb"]) > 0
    assert set(facts) >= {"os_id", "os_version", "init", "apt_lists", "kvm_group", "upstream_nix", "binfmt"}
    # this machine is Debian: dpkg knows its installed packages, and the probe lists them
    assert {"dpkg", "apt"} <= set(facts["installed"].split())


def test_only_missing_packages_go_to_apt() -> None:
    """A pre-baked image (or a second run) has them all: the role then skips apt entirely."""
    assert plan(DEBIAN12, OPTS)["missing"] == plan(DEBIAN12, OPTS)["packages"]
    some = plan(dict(DEBIAN12, installed="nix-bin git rsync libc6"), OPTS)
    assert some["missing"] == ["nix-setup-systemd", "ca-certificates", "xz-utils"]
    baked = "nix-bin nix-setup-systemd ca-certificates git rsync xz-utils"
    assert plan(dict(DEBIAN12, installed=baked), OPTS)["missing"] == []
    # a package the user adds is still installed on a pre-baked image
    assert plan(dict(DEBIAN12, installed=baked), dict(OPTS, extra_packages=["jq"]))["missing"] == ["jq"]


def test_native_build_installs_no_qemu_in_one_list() -> None:
    p = plan(DEBIAN12, dict(OPTS, build_systems=["x86_64-linux"]))
    assert p["packages"] == ["nix-bin", "nix-setup-systemd", "ca-certificates", "git", "rsync", "xz-utils"]
    assert p["emulated"] == [] and not p["qemu"] and p["system"] == "x86_64-linux"
    assert p["max_jobs"] == 4 and p["cores"] == 8  # one job per 2 GiB of memory


def test_foreign_system_gets_qemu_unless_told_not_to() -> None:
    p = plan(DEBIAN12, dict(OPTS, build_systems=["aarch64-linux"], build_method="docker", extra_packages=["git", "jq"]))
    assert p["packages"][-3:] == ["jq", "qemu-user-static", "docker.io"] and p["packages"].count("git") == 1
    assert p["emulated"] == ["aarch64-linux"] and p["binfmt_missing"] == ["qemu-aarch64"]
    off = plan(DEBIAN12, dict(OPTS, build_systems=["aarch64-linux"], qemu=False))
    assert "qemu-user-static" not in off["packages"] and off["emulated"] == ["aarch64-linux"]
    # nix_daemon's binfmt check: the handler each emulated system needs, none without QEMU
    assert p["binfmt_handlers"] == {"aarch64-linux": "qemu-aarch64"} and off["binfmt_handlers"] == {}


def test_no_package_lists_means_update_now() -> None:
    assert plan(dict(DEBIAN12, apt_lists="0"), OPTS)["apt_cache_valid_time"] == 0
    assert plan(DEBIAN12, OPTS)["apt_cache_valid_time"] == 3600


def test_upstream_needs_its_prerequisites_only_once() -> None:
    first = plan(dict(DEBIAN12, os_version="11"), dict(OPTS, install_method="upstream"))
    assert first["packages"][:3] == ["curl", "xz-utils", "ca-certificates"] and "nix-bin" not in first["packages"]
    again = plan(dict(DEBIAN12, upstream_nix="yes"), dict(OPTS, install_method="upstream"))
    assert "curl" not in again["packages"] and again["upstream_installed"]


@pytest.mark.parametrize(
    ("facts", "opts", "needle"),
    [
        ({"os_id": "fedora"}, {}, "supports Debian-family hosts"),
        ({"arch": "s390x"}, {}, "s390x"),
        ({"init": "sh"}, {}, "Without systemd set nix_bootstrap_multi_user: false"),
        ({}, {"build_systems": ["sparc-linux"]}, "may name"),
        ({"os_version": "11"}, {}, "has no nix-bin package with flakes"),
    ],
)
def test_bad_hosts_and_options_say_what_to_change(facts, opts, needle: str) -> None:
    with pytest.raises(HostError, match=needle):
        plan(dict(DEBIAN12, **facts), dict(OPTS, **opts))


def test_kvm_group_only_for_multi_user() -> None:
    assert plan(dict(DEBIAN12, kvm_group="kvm"), OPTS)["kvm_group"] is True
    assert plan(dict(DEBIAN12, kvm_group="kvm", init="sh"), dict(OPTS, multi_user=False))["kvm_group"] is False

# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What nix_bootstrap does on a host: the checks of the host and the options, the Nix
settings for the machine, and the one list of packages to install. Pure functions over
what PROBE prints, unit tested."""

from __future__ import annotations

import shlex
from typing import Any, Dict, List

SYSTEMS = {
    "x86_64": "x86_64-linux",
    "aarch64": "aarch64-linux",
    "armv7l": "armv7l-linux",
    "i686": "i686-linux",
    "riscv64": "riscv64-linux",
}
QEMU_HANDLERS = {
    "x86_64-linux": "qemu-x86_64",
    "aarch64-linux": "qemu-aarch64",
    "armv7l-linux": "qemu-arm",
    "armv6l-linux": "qemu-arm",
    "i686-linux": "qemu-i386",
    "riscv64-linux": "qemu-riscv64",
    "powerpc64le-linux": "qemu-ppc64le",
}
# Always installed: git (git flake references), rsync (the rsync fetch method), and
# what both need for HTTPS and xz archives.
BASE_PACKAGES = ["ca-certificates", "git", "rsync", "xz-utils"]
UPSTREAM_PREREQUISITES = ["curl", "xz-utils", "ca-certificates"]
UPSTREAM_BIN = "/nix/var/nix/profiles/default/bin"

# One shell command gathers everything the role needs about the host (instead of the
# setup module, a find and three stats): KEY=VALUE lines.
PROBE = " ".join(
    [
        "echo arch=$(uname -m);",
        "echo vcpus=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN);",
        "echo mem_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo);",
        "if [ -r /etc/os-release ]; then . /etc/os-release; fi;",
        'echo "os_id=${ID:-}"; echo "os_like=${ID_LIKE:-}"; echo "os_version=${VERSION_ID:-}";',
        "echo init=$(cat /proc/1/comm 2>/dev/null);",
        "echo apt_lists=$(ls /var/lib/apt/lists/ 2>/dev/null | grep -c '_Packages');",
        "echo kvm_group=$(stat -c %G /dev/kvm 2>/dev/null);",
        "echo upstream_nix=$(test -x %s/nix && echo yes);" % UPSTREAM_BIN,
        "echo binfmt=$(ls /proc/sys/fs/binfmt_misc/ 2>/dev/null | tr '\\n' ' ');",
        # installed packages, so that a pre-baked image (or a second run) skips apt entirely
        "echo installed=$(dpkg-query -W -f='${db:Status-Status}:${Package} ' 2>/dev/null"
        " | tr ' ' '\\n' | sed -n 's/^installed://p' | tr '\\n' ' ')",
    ]
)


class HostError(ValueError):
    """The host or the options cannot work; the message says what to change."""


def parse_probe(text: str) -> Dict[str, str]:
    facts: Dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            facts[key.strip()] = value.strip()
    return facts


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        return default


def _check_host(facts: Dict[str, str], opts: Dict[str, Any], build_systems: List[str]) -> None:
    """Fail, naming the host and the options, unless nix_bootstrap supports this host with these options."""
    arch = facts.get("arch", "")
    os_id, like = facts.get("os_id", ""), facts.get("os_like", "").split()
    major = _int(facts.get("os_version", "").split(".")[0])
    systemd = facts.get("init", "") == "systemd"
    unknown = [s for s in build_systems if s not in QEMU_HANDLERS and s != SYSTEMS.get(arch)]
    debian_family = os_id == "debian" or "debian" in like or os_id == "ubuntu"
    if not debian_family or arch not in SYSTEMS or (opts["multi_user"] and not systemd) or unknown:
        raise HostError(
            "nix_bootstrap supports Debian-family hosts on %s with systemd for multi-user Nix"
            " (nix_bootstrap_multi_user: true). This host: %s %s, %s, init %s."
            " nix_bootstrap_build_systems may name %s (got %s). Without systemd"
            " set nix_bootstrap_multi_user: false."
            % (
                ", ".join(SYSTEMS),
                os_id or "unknown OS",
                facts.get("os_version", ""),
                arch or "unknown architecture",
                facts.get("init", "?"),
                ", ".join(QEMU_HANDLERS),
                build_systems,
            )
        )
    if opts["install_method"] == "debian" and not (
        (os_id == "debian" and major >= 12) or (os_id == "ubuntu" and major >= 24)
    ):
        raise HostError(
            "%s %s has no nix-bin package with flakes (Debian 12 and Ubuntu 24.04 are the first). Use a newer image, or"
            " set nix_bootstrap_install_method: upstream to install Nix %s with the official installer."
            % (os_id, facts.get("os_version", ""), opts.get("upstream_version", ""))
        )


def _packages(facts: Dict[str, str], opts: Dict[str, Any], qemu: bool) -> List[str]:
    """The packages to install, in order and without repeats: Nix's (or the upstream installer's), ours, the user's."""
    packages: List[str] = []
    if opts["install_method"] == "debian":
        packages += ["nix-bin"] + (["nix-setup-systemd"] if opts["multi_user"] else [])
    elif facts.get("upstream_nix") != "yes":
        packages += UPSTREAM_PREREQUISITES
    packages += BASE_PACKAGES + list(opts.get("extra_packages") or [])
    if qemu:
        packages.append("qemu-user-static")
    if opts.get("build_method") == "docker":
        packages.append(opts.get("docker_package") or "docker.io")
    return list(dict.fromkeys(packages))


def plan(facts: Dict[str, str], opts: Dict[str, Any]) -> Dict[str, Any]:
    """Check the host and options; return the settings and the packages to install."""
    build_systems = list(dict.fromkeys(opts.get("build_systems") or []))
    _check_host(facts, opts, build_systems)
    arch = facts.get("arch", "")
    system = SYSTEMS[arch]
    emulated = [s for s in build_systems if s != system]
    vcpus = max(1, _int(facts.get("vcpus"), 1))
    mem_mb = _int(facts.get("mem_kb")) // 1024
    max_jobs = _int(opts.get("max_jobs")) or max(1, min(vcpus, mem_mb // 2048))
    cores = _int(opts.get("cores")) or vcpus
    qemu = bool(emulated) and opts.get("qemu", True)
    present = set(facts.get("binfmt", "").split())
    packages = _packages(facts, opts, qemu)
    installed = set(facts.get("installed", "").split())
    return {
        "system": system,
        "emulated": emulated,
        "max_jobs": max_jobs,
        "cores": cores,
        "packages": packages,
        # what apt must install: nothing on a pre-baked image or a second run
        "missing": [p for p in packages if p not in installed],
        # A fresh image may have no package lists but a recent lists directory, which
        # apt's cache_valid_time would take for a recent update.
        "apt_cache_valid_time": _int(opts.get("apt_cache_valid_time")) if _int(facts.get("apt_lists")) > 0 else 0,
        "qemu": qemu,
        "binfmt_missing": [QEMU_HANDLERS[s] for s in emulated if QEMU_HANDLERS.get(s) not in present] if qemu else [],
        # the handler each emulated system needs (nix_daemon checks them, restarting systemd-binfmt if needed)
        "binfmt_handlers": {s: QEMU_HANDLERS[s] for s in emulated} if qemu else {},
        "daemon_group": "nix-users" if opts["install_method"] == "debian" else "nixbld",
        # make-disk-image runs a VM in the build: multi-user build users need /dev/kvm,
        # which Debian gives to the kvm group only.
        "kvm_group": bool(opts["multi_user"]) and facts.get("kvm_group") == "kvm",
        "upstream_installed": facts.get("upstream_nix") == "yes",
        "facts": {
            "architecture": arch,
            "vcpus": vcpus,
            "memtotal_mb": mem_mb,
            "os": facts.get("os_id", ""),
            "os_version": facts.get("os_version", ""),
            "init": facts.get("init", ""),
        },
    }


def probe_command() -> str:
    return "/bin/sh -c %s" % shlex.quote(PROBE)

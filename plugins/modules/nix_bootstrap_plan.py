# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# The work is done by the action plugin of the same name; this file holds its documentation.

from __future__ import annotations

DOCUMENTATION = r"""
module: nix_bootstrap_plan
short_description: Look at a builder, check it and the nix_bootstrap options, and plan the Nix setup
version_added: "0.2.0"
description:
  - The first step of the nixforge.images.nix_bootstrap role. Looks at the host with one shell command
    (architecture, vCPUs, memory, OS release, init system, apt lists, C(/dev/kvm), an upstream Nix) instead of
    gathering facts, fails with what to change when the host or the options cannot work, and returns the
    Nix settings and the single list of packages the role installs in one apt transaction (QEMU only for
    systems the host cannot run natively, and only when O(qemu=true)).
  - With O(install=true), installs the missing ones in the same step.
author:
  - nixforge.images contributors (@nixforge)
options:
  install_method: {description: V(debian) or V(upstream)., type: str, choices: [debian, upstream], default: debian}
  upstream_version: {description: Nix release of the upstream installer (for messages)., type: str, default: ""}
  multi_user: {description: Multi-user Nix (needs systemd)., type: bool, default: true}
  build_method:
    {description: V(docker) adds the Docker engine package., type: str, choices: [nix, docker], default: nix}
  docker_package: {description: Debian package of the Docker engine., type: str, default: docker.io}
  build_systems: {description: Nix systems builds will target., type: list, elements: str, default: []}
  qemu: {description: Install qemu-user-static for systems the host cannot run natively., type: bool, default: true}
  max_jobs: {description: C(max-jobs); 0 computes it from the machine., type: int, default: 0}
  cores: {description: C(cores); 0 is the number of vCPUs., type: int, default: 0}
  extra_packages: {description: More Debian packages., type: list, elements: str, default: []}
  apt_cache_valid_time:
    {description: Accepted apt cache age (0 when the host has no package lists)., type: int, default: 3600}
  install:
    description:
      - Also install the missing packages, in one transaction with M(ansible.builtin.apt) (with the task's
        C(become)), in the same step. V(false) only plans.
    type: bool
    default: false
extends_documentation_fragment:
  - nixforge.images.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  platform:
    support: full
    platforms: posix
    details: Runs one read-only shell command on the host, without become; then, with O(install=true), the apt
      module.
"""

EXAMPLES = r"""
- name: Plan the Nix setup of an x86_64 host that builds aarch64 images
  nixforge.images.nix_bootstrap_plan:
    build_systems: [aarch64-linux]
  register: plan
"""

RETURN = r"""
system: {description: The host's Nix system., returned: success, type: str, sample: x86_64-linux}
emulated:
  {description: Build systems the host runs through emulation (C(extra-platforms))., returned: success, type: list,
   elements: str}
max_jobs: {description: C(max-jobs) for nix.conf., returned: success, type: int}
cores: {description: C(cores) for nix.conf., returned: success, type: int}
packages: {description: "Every package to install, in one transaction.", returned: success, type: list, elements: str}
missing: {description: "Those of RV(packages) not installed yet.", returned: success, type: list, elements: str}
installed:
  {description: "What O(install=true) installed (empty when nothing was missing).", returned: with O(install=true),
   type: list, elements: str}
install_seconds:
  {description: "How long the apt transaction took.", returned: with O(install=true) when a package was missing,
   type: float}
apt_cache_valid_time: {description: Cache age for the apt task., returned: success, type: int}
qemu: {description: Whether QEMU is installed., returned: success, type: bool}
binfmt_handlers:
  description: >-
    The binfmt_misc handler each emulated system needs (empty without QEMU), for
    O(nixforge.images.nix_daemon#module:binfmt).
  returned: success
  type: dict
  sample: {aarch64-linux: qemu-aarch64}
daemon_group: {description: Group allowed to talk to the daemon., returned: success, type: str}
kvm_group: {description: Whether the build users need the kvm group., returned: success, type: bool}
upstream_installed: {description: Whether an upstream Nix is already there., returned: success, type: bool}
facts: {description: What was seen on the host., returned: success, type: dict}
"""

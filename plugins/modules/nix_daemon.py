#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Check the binfmt_misc handlers, put users in the groups Nix needs, start the services the
build needs, write nix.conf, keep the nix-daemon running with it, and ask Nix its version: the
steps of nix_bootstrap after the package installation in one module run on the builder (instead
of a stat, a template, user, shell and systemd tasks and a command, each a round trip and a
Python start there, or a skipped task when not needed)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: nix_daemon
short_description: Write nix.conf, run the nix-daemon with it and check that Nix answers
version_added: "0.2.0"
description:
  - The steps of the nixforge.images.nix_bootstrap role after the package installation, on the builder, in one
    module run, in this order.
  - With O(binfmt), checks that the kernel has a C(binfmt_misc) handler for each emulated system; when one is
    missing, restarts C(systemd-binfmt.service) and checks again, and fails naming the systems still missing.
  - Adds O(daemon_users) to O(daemon_group) (creating a user that does not exist, with a home directory).
  - With O(kvm_build_users), adds every member of the C(nixbld) group to the C(kvm) group (make-disk-image runs a VM
    in the build, and Debian gives C(/dev/kvm) to the C(kvm) group only).
  - Enables and starts O(services) (for example C(docker.service)).
  - Writes O(config) to O(config_path) (mode 0644, owned by root; the directory is created when missing) when the
    file differs, replacing it atomically.
  - With O(daemon=true) (multi-user Nix), enables C(nix-daemon.socket) and C(nix-daemon.service) for boots and
    keeps the service running. A changed C(nix.conf) restarts the service; a stopped service is started. The
    socket is only enabled, not started, because Debian's package starts the service before its socket, after
    which systemd refuses to start the socket.
  - Then runs C(nix --version) and fails, with its output, when Nix does not answer.
author:
  - nixforge.images contributors (@nixforge)
options:
  config:
    description: The whole content of C(nix.conf).
    type: str
    required: true
  config_path:
    description: Where C(nix.conf) goes.
    type: path
    default: /etc/nix/nix.conf
  daemon:
    description: Run the nix-daemon (multi-user Nix, systemd).
    type: bool
    default: true
  search_path:
    description: Directories searched for C(nix) after C(/usr/local/bin:/usr/bin:/bin) (the upstream profile's).
    type: list
    elements: path
    default: []
  binfmt:
    description: The C(binfmt_misc) handler each emulated Nix system needs, for example C({aarch64-linux qemu-aarch64}).
    type: dict
    default: {}
  system:
    description: The host's own Nix system, for the message when a C(binfmt_misc) handler is missing.
    type: str
    default: ""
  daemon_group:
    description: The group whose members may use the nix-daemon (C(nix-users), or C(nixbld) for upstream Nix).
    type: str
    default: nix-users
  daemon_users:
    description: Users to add to O(daemon_group).
    type: list
    elements: str
    default: []
  kvm_build_users:
    description: Add the Nix build users (members of C(nixbld)) to the C(kvm) group.
    type: bool
    default: false
  services:
    description: systemd services to enable and start, for example C(docker.service).
    type: list
    elements: str
    default: []
extends_documentation_fragment:
  - nixforge.images.attributes
attributes:
  check_mode:
    support: full
    details: >-
      Reports whether C(nix.conf) would change, the services would be enabled, started or restarted and users
      added to groups; a missing C(binfmt_misc) handler is reported, not failed on.
  diff_mode:
    support: full
    details: The change of C(nix.conf).
  platform:
    support: full
    platforms: posix
    details: Needs systemd when O(daemon=true), O(binfmt) or O(services) are set; run with become.
"""

EXAMPLES = r"""
- name: Write nix.conf, run the nix-daemon and check that Nix answers
  become: true
  nixforge.images.nix_daemon:
    config: |
      experimental-features = nix-command flakes
      max-jobs = 4
  register: nix
"""

RETURN = r"""
binfmt_restarted:
  description: Whether C(systemd-binfmt.service) was (or would be) restarted for a missing handler.
  returned: always
  type: bool
users_added:
  description: The C(<user> to <group>) memberships added (or that would be).
  returned: always
  type: list
  elements: str
  sample: ["nixbld1 to kvm"]
services_started:
  description: The services of O(services) enabled or started by this run.
  returned: always
  type: list
  elements: str
config_changed: {description: Whether C(nix.conf) was (or would be) written., returned: always, type: bool}
enabled: {description: Units enabled by this run., returned: always, type: list, elements: str}
service:
  description: What happened to C(nix-daemon.service) - V(restarted), V(started), V(running) or V(unmanaged).
  returned: always
  type: str
  sample: restarted
nix_version:
  description: The version C(nix --version) printed (empty in check mode before Nix exists).
  returned: always
  type: str
  sample: 2.26.3
"""

import grp
import os
import pwd
import re
import tempfile
from typing import Any, Dict, List, Optional, Tuple

from ansible.module_utils.basic import AnsibleModule

UNITS = ("nix-daemon.socket", "nix-daemon.service")
SERVICE = "nix-daemon.service"
BINFMT_DIR = "/proc/sys/fs/binfmt_misc"
# searched in this order (not PATH, which sudo and the login shell set differently)
BASE_PATH = ["/usr/local/bin", "/usr/bin", "/bin"]


class NixDaemon:
    """One run: the file, the units, the version; each step reports what it changed."""

    def __init__(self, module: AnsibleModule) -> None:
        self.module = module
        self.params = module.params
        self.check = module.check_mode
        self.result: Dict[str, Any] = {
            "changed": False,
            "enabled": [],
            "service": "unmanaged",
            "nix_version": "",
            "binfmt_restarted": False,
            "users_added": [],
            "services_started": [],
        }

    def run(self) -> Dict[str, Any]:
        host_changed = [self.check_binfmt(), self.add_users(), self.start_services()]
        config_changed = self.write_config()
        units_changed = self.params["daemon"] and self.manage_units(restart=config_changed)
        self.result["nix_version"] = self.nix_version()
        self.result["changed"] = bool(any(host_changed) or config_changed or units_changed)
        return self.result

    # -- the host: binfmt_misc, groups, services ---------------------------------------

    def check_binfmt(self) -> bool:
        """Every handler there, else restart systemd-binfmt once; fail when some are still missing."""
        missing = binfmt_missing(self.params["binfmt"])
        if not missing:
            return False
        self.result["binfmt_restarted"] = True
        if self.check:
            return True
        self.systemctl("restart", "systemd-binfmt.service")
        still = binfmt_missing(self.params["binfmt"])
        if still:
            self.module.fail_json(
                msg="The kernel has no binfmt_misc handler for %s after installing qemu-user-static and restarting"
                " systemd-binfmt, so Nix cannot build for them on this %s host. Use a native builder for that system,"
                " or a host (not a container) whose kernel has binfmt_misc; if the handlers are registered by the host"
                " kernel outside this system, set nix_bootstrap_binfmt_register: false."
                % (", ".join(still), self.params["system"] or "?"),
                **self.result,
            )
        return True

    def add_users(self) -> bool:
        """daemon_users to daemon_group; with kvm_build_users the nixbld members to kvm."""
        wanted = [(user, self.params["daemon_group"]) for user in self.params["daemon_users"]]
        if self.params["kvm_build_users"]:
            wanted += [(user, "kvm") for user in group_members("nixbld")]
        for user, group in wanted:
            exists = user_exists(user)
            if exists and in_group(user, group):
                continue
            self.result["users_added"].append("%s to %s" % (user, group))
            if self.check:
                continue
            argv = ["usermod", "-a", "-G", group, user] if exists else ["useradd", "-m", "-G", group, user]
            rc, out, err = self.module.run_command(argv)
            if rc != 0:
                self.module.fail_json(
                    msg="%s failed (exit %d): %s" % (" ".join(argv), rc, (err or out).strip()[-500:]), **self.result
                )
        return bool(self.result["users_added"])

    def start_services(self) -> bool:
        for service in self.params["services"]:
            enabled = self.systemctl("is-enabled", service, check=False)[1].strip() == "enabled"
            active = self.systemctl("is-active", service, check=False)[1].strip() == "active"
            if enabled and active:
                continue
            self.result["services_started"].append(service)
            if not self.check:
                if not enabled:
                    self.systemctl("enable", service)
                if not active:
                    self.systemctl("start", service)
        return bool(self.result["services_started"])

    # -- nix.conf ---------------------------------------------------------------------

    def write_config(self) -> bool:
        path, content = self.params["config_path"], self.params["config"]
        before = read_text(path)
        changed = before != content
        self.result["config_changed"] = changed
        if changed and self.module._diff:
            self.result["diff"] = {
                "before": before or "",
                "after": content,
                "before_header": path,
                "after_header": path,
            }
        if changed and not self.check:
            self.write(path, content)
        return changed

    def write(self, path: str, content: str) -> None:
        """Through a temporary file next to it and Ansible's atomic_move (never half-written)."""
        directory = os.path.dirname(path) or "."
        os.makedirs(directory, mode=0o755, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".nix.conf.", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(content)
        except OSError:
            os.unlink(tmp)
            raise
        self.module.atomic_move(tmp, path)
        self.module.set_mode_if_different(path, "0644", False)

    # -- systemd ----------------------------------------------------------------------

    def systemctl(self, *args: str, check: bool = True) -> Tuple[int, str]:
        rc, out, err = self.module.run_command(["systemctl", *args])
        if check and rc != 0:
            self.module.fail_json(
                msg="systemctl %s failed (exit %d): %s" % (" ".join(args), rc, (err or out).strip()[-500:]),
                **self.result,
            )
        return rc, out

    def manage_units(self, restart: bool) -> bool:
        """Enable what is not, start a stopped service or restart a running one for a new
        nix.conf (a start reads it too); True when anything changed."""
        states = self.systemctl("is-enabled", *UNITS, check=False)[1].split()
        disabled = [unit for unit, state in zip(UNITS, states + [""] * len(UNITS)) if state != "enabled"]
        self.result["enabled"] = disabled
        active = self.systemctl("is-active", SERVICE, check=False)[1].strip() == "active"
        verb = "start" if not active else "restart" if restart else None
        self.result["service"] = {"start": "started", "restart": "restarted", None: "running"}[verb]
        if not self.check:
            if disabled:
                self.systemctl("enable", *disabled)
            if verb:
                self.systemctl(verb, SERVICE)
        return bool(disabled or verb)

    # -- Nix --------------------------------------------------------------------------

    def nix_version(self) -> str:
        search = BASE_PATH + list(self.params["search_path"])
        nix = find_nix(search)
        if nix is None:
            if self.check:
                return ""  # installed by the real run
            self.module.fail_json(msg="Nix is not installed: no 'nix' in %s." % ":".join(search), **self.result)
        rc, out, err = self.module.run_command([nix, "--version"], environ_update={"PATH": ":".join(search)})
        if rc != 0:
            self.module.fail_json(
                msg="Nix does not answer: '%s --version' exited %d: %s" % (nix, rc, (err or out).strip()[-500:]),
                **self.result,
            )
        return parse_version(out)


def read_text(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def binfmt_missing(handlers: Dict[str, str]) -> List[str]:
    """The systems whose handler (``{system: handler}``) the kernel does not have."""
    return [system for system, handler in handlers.items() if not os.path.exists(os.path.join(BINFMT_DIR, handler))]


def group_members(group: str) -> List[str]:
    try:
        return list(grp.getgrnam(group).gr_mem)
    except KeyError:
        return []


def user_exists(user: str) -> bool:
    try:
        pwd.getpwnam(user)
    except KeyError:
        return False
    return True


def in_group(user: str, group: str) -> bool:
    """A member, or the user's primary group (as ``id -nG`` counts)."""
    try:
        entry = grp.getgrnam(group)
    except KeyError:
        return False
    return user in entry.gr_mem or pwd.getpwnam(user).pw_gid == entry.gr_gid


def find_nix(search: List[str]) -> Optional[str]:
    for directory in search:
        candidate = os.path.join(directory, "nix")
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def parse_version(output: str) -> str:
    """'nix (Nix) 2.26.3' -> '2.26.3'."""
    match = re.search(r"[0-9][0-9.]*[0-9]", output)
    return match.group(0) if match else output.strip()


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            config=dict(type="str", required=True),
            config_path=dict(type="path", default="/etc/nix/nix.conf"),
            daemon=dict(type="bool", default=True),
            search_path=dict(type="list", elements="path", default=[]),
            binfmt=dict(type="dict", default={}),
            system=dict(type="str", default=""),
            daemon_group=dict(type="str", default="nix-users"),
            daemon_users=dict(type="list", elements="str", default=[]),
            kvm_build_users=dict(type="bool", default=False),
            services=dict(type="list", elements="str", default=[]),
        ),
        supports_check_mode=True,
    )
    module.exit_json(**NixDaemon(module).run())


if __name__ == "__main__":
    main()

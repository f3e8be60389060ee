#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Write nix.conf, keep the nix-daemon running with it, and ask Nix its version: the last
steps of nix_bootstrap in one module run on the builder (instead of a template, two
systemd tasks and a command, each a round trip and a Python start there)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: nix_daemon
short_description: Write nix.conf, run the nix-daemon with it and check that Nix answers
version_added: "0.2.0"
description:
  - The last step of the nixforge.images.nix_bootstrap role, on the builder, in one module run.
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
extends_documentation_fragment:
  - nixforge.images.attributes
attributes:
  check_mode:
    support: full
    details: Reports whether C(nix.conf) would change and the service would be enabled, started or restarted.
  diff_mode:
    support: full
    details: The change of C(nix.conf).
  platform:
    support: full
    platforms: posix
    details: Needs systemd when O(daemon=true); run with become.
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

import os
import re
import tempfile
from typing import Any, Dict, List, Optional, Tuple

from ansible.module_utils.basic import AnsibleModule

UNITS = ("nix-daemon.socket", "nix-daemon.service")
SERVICE = "nix-daemon.service"
# searched in this order (not PATH, which sudo and the login shell set differently)
BASE_PATH = ["/usr/local/bin", "/usr/bin", "/bin"]


class NixDaemon:
    """One run: the file, the units, the version; each step reports what it changed."""

    def __init__(self, module: AnsibleModule) -> None:
        self.module = module
        self.params = module.params
        self.check = module.check_mode
        self.result: Dict[str, Any] = {"changed": False, "enabled": [], "service": "unmanaged", "nix_version": ""}

    def run(self) -> Dict[str, Any]:
        config_changed = self.write_config()
        units_changed = self.params["daemon"] and self.manage_units(restart=config_changed)
        self.result["nix_version"] = self.nix_version()
        self.result["changed"] = bool(config_changed or units_changed)
        return self.result

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
        ),
        supports_check_mode=True,
    )
    module.exit_json(**NixDaemon(module).run())


if __name__ == "__main__":
    main()

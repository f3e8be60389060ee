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
BASE_PATH = ["/usr/local/bin", "/usr/bin", "/bin"]


class NixDaemon:
    """One run: the file, the units, the version; each step reports what it changed."""

    def __init__(self, module: AnsibleModule) -> None:
        self.module = module
        self.params = module.params
        self.check = module.check_mode
        self.result: Dict[str, Any] = {"changed": False, "enabled": [], "service": "unmanaged", "nix_version": ""}

    def run(self) -> Dict[str, Any]:
        changed = self.write_config()
        if self.params["daemon"]:
            self.manage_units(restart=changed)
        self.result["nix_version"] = self.nix_version()
        self.result["changed"] = (
            changed
            or bool(self.result["enabled"])
            or self.result["service"]
            in (
                "started",
                "restarted",
            )
        )
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
            write_atomically(path, content)
        return changed

    # -- systemd ----------------------------------------------------------------------

    def systemctl(self, *args: str, check: bool = True) -> Tuple[int, str]:
        rc, out, err = self.module.run_command(["systemctl", *args])
        if check and rc != 0:
            self.module.fail_json(
                msg="systemctl %s failed (exit %d): %s" % (" ".join(args), rc, (err or out).strip()[-500:]),
                **self.result,
            )
        return rc, out

    def manage_units(self, restart: bool) -> None:
        _rc, out = self.systemctl("is-enabled", *UNITS, check=False)
        states = out.split()
        disabled = [unit for unit, state in zip(UNITS, states + [""] * len(UNITS)) if state != "enabled"]
        if disabled:
            self.result["enabled"] = disabled
            if not self.check:
                self.systemctl("enable", *disabled)
        active = self.systemctl("is-active", SERVICE, check=False)[1].strip() == "active"
        if restart and (active or not self.check):
            self.result["service"] = "restarted"
            if not self.check:
                self.systemctl("restart", SERVICE)
        elif not active:
            self.result["service"] = "started"
            if not self.check:
                self.systemctl("start", SERVICE)
        else:
            self.result["service"] = "running"

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


def write_atomically(path: str, content: str) -> None:
    """Replace `path` with `content`, mode 0644 (root's when run as root), never half-written."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o755, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".nix.conf.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(content)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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

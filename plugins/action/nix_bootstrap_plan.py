# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin: look at the builder with one shell command, check it and the
nix_bootstrap options, and work out the Nix settings and the one package list
(plugin_utils/bootstrap.py); with ``install``, install the missing packages in the same
step (ansible.builtin.apt, one transaction): one task, not two."""

from __future__ import annotations

import time
from typing import Any, Dict

from ansible.module_utils.common.text.converters import to_text
from ansible_collections.nixforge.images.plugins.plugin_utils._action import NixforgeAction
from ansible_collections.nixforge.images.plugins.plugin_utils.bootstrap import (
    HostError,
    parse_probe,
    plan,
    probe_command,
)

ARGUMENT_SPEC: Dict[str, Any] = {
    "install_method": {"type": "str", "default": "debian", "choices": ["debian", "upstream"]},
    "upstream_version": {"type": "str", "default": ""},
    "multi_user": {"type": "bool", "default": True},
    "build_method": {"type": "str", "default": "nix", "choices": ["nix", "docker"]},
    "docker_package": {"type": "str", "default": "docker.io"},
    "build_systems": {"type": "list", "elements": "str", "default": []},
    "qemu": {"type": "bool", "default": True},
    "max_jobs": {"type": "int", "default": 0},
    "cores": {"type": "int", "default": 0},
    "extra_packages": {"type": "list", "elements": "str", "default": []},
    "apt_cache_valid_time": {"type": "int", "default": 3600},
    "install": {"type": "bool", "default": False},
}


class ActionModule(NixforgeAction):
    argument_spec = ARGUMENT_SPEC

    def act(self, result: Dict[str, Any], params: Dict[str, Any], task_vars: Dict[str, Any]) -> Dict[str, Any]:
        res = self._low_level_execute_command(probe_command(), sudoable=False)
        if res.get("rc", 1) != 0:
            result.update(failed=True, msg="Could not look at the host: %s" % to_text(res.get("stderr", "")).strip())
            return result
        try:
            result.update(plan(parse_probe(to_text(res.get("stdout", ""))), params))
        except HostError as exc:
            result.update(failed=True, msg=str(exc))
            return result
        result["changed"] = False
        if params["install"]:
            result["installed"] = []
            if result["missing"]:
                self._install(result, task_vars)
        return result

    def _install(self, result: Dict[str, Any], task_vars: Dict[str, Any]) -> None:
        """The missing packages in one apt transaction, with the task's become and check mode."""
        args = {
            "name": result["missing"],
            "state": "present",
            "install_recommends": False,
            "update_cache": True,
            "cache_valid_time": result["apt_cache_valid_time"],
        }
        started = time.monotonic()
        apt = self._execute_module(module_name="ansible.builtin.apt", module_args=args, task_vars=task_vars)
        result["install_seconds"] = round(time.monotonic() - started, 2)
        result["installed"] = list(result["missing"]) if apt.get("changed") else []
        result["changed"] = bool(apt.get("changed"))
        if apt.get("failed"):
            result.update(
                failed=True,
                msg="Installing %s with apt failed: %s" % (", ".join(result["missing"]), apt.get("msg") or apt),
            )

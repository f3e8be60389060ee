# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin: wait until Ansible can log in to a builder; fail at once on an SSH error
that waiting cannot heal (see module_utils/_base/_ssh_errors.py)."""

from __future__ import annotations

import time
from typing import Any, Dict, Optional

from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display
from ansible_collections.nixforge.images.plugins.module_utils._base._ssh_errors import classify_ssh_error

display = Display()


# keep in step with DOCUMENTATION in plugins/modules/wait_for_builder.py
ARGUMENT_SPEC: Dict[str, Any] = dict(
    timeout=dict(type="int", default=600),
    sleep=dict(type="int", default=2),
    permanent_error_grace=dict(type="int", default=20),
    connect_timeout=dict(type="int"),
    require_kvm=dict(type="bool", default=False),
)


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(ARGUMENT_SPEC)

    def probe(self, task_vars: Dict[str, Any]) -> None:
        try:
            self._connection.reset()
        except AttributeError:
            pass
        if self._discovered_interpreter_key:
            task_vars.get("ansible_facts", {}).pop(self._discovered_interpreter_key, None)
        reply = self._execute_module(module_name="ansible.legacy.ping", module_args={}, task_vars=task_vars)
        if reply.get("ping") != "pong":
            raise RuntimeError(reply.get("msg") or "the ping module did not answer pong")

    def kvm(self, task_vars: Dict[str, Any]) -> Dict[str, Any]:
        """/dev/kvm on a builder that answers: a host of the ssh provider can only be checked here."""
        stat = {"path": "/dev/kvm", "get_checksum": False}
        reply = self._execute_module(module_name="ansible.legacy.stat", module_args=stat, task_vars=task_vars)
        if reply.get("stat", {}).get("exists"):
            return {"kvm": True}
        host = task_vars.get("ansible_host") or task_vars.get("inventory_hostname")
        return {
            "kvm": False,
            "failed": True,
            "msg": "The builder needs /dev/kvm (option require_kvm; builder_host_require_kvm; in the pipelines "
            "nixforge_require_kvm: the builder %s has no /dev/kvm, which the DigitalOcean image build needs). Use a "
            "host with hardware virtualisation, or set nixforge_require_kvm=false only for an image definition that "
            "needs no KVM." % host,
        }

    def run(self, tmp: Optional[str] = None, task_vars: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        if self._task.check_mode:
            result["skipped"] = True
            return result
        args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)[1]
        timeout = float(args["timeout"])
        sleep = float(args["sleep"])
        grace = float(args["permanent_error_grace"])
        start = time.monotonic()
        first_permanent: Optional[float] = None
        attempts = 0
        last = ""
        while True:
            attempts += 1
            try:
                self.probe(task_vars)
                result.update(elapsed=round(time.monotonic() - start, 1), attempts=attempts, changed=False)
                if args["require_kvm"]:
                    result.update(self.kvm(task_vars))
                return result
            except Exception as exc:  # noqa: BLE001 - every failure is classified below
                last = to_text(exc).strip()
            now = time.monotonic()
            known = classify_ssh_error(last)
            if known is not None:
                immediate, hint = known
                first_permanent = first_permanent if first_permanent is not None else now
                if immediate or now - first_permanent >= grace:
                    result.update(failed=True, attempts=attempts, elapsed=round(now - start, 1))
                    result["msg"] = "SSH to the builder failed in a way waiting cannot fix: %s. %s." % (
                        last.splitlines()[-1] if last else "unknown error",
                        hint,
                    )
                    return result
            else:
                first_permanent = None
            if now - start >= timeout:
                result.update(failed=True, attempts=attempts, elapsed=round(now - start, 1))
                result["msg"] = (
                    "The builder did not accept an SSH login within %d s (option 'timeout'; the builder_host role "
                    "sets it from builder_host_wait_timeout); last error: %s" % (int(timeout), last or "none")
                )
                return result
            display.vvv("wait_for_builder: not ready yet (%s), retrying in %.0f s" % (last[:200], sleep))
            time.sleep(max(0.0, min(sleep, start + timeout - now)))  # never past the timeout

# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin: the controller-side start of the builder_host role's entry points.
Provision: check every input, work out the lifetime, make the private state directory
and the per-build keys. Teardown: check the build id and read the build's state."""

from __future__ import annotations

import subprocess
import time
from typing import Any, Dict, Optional

from ansible.plugins.action import ActionBase
from ansible_collections.nixforge.images.plugins.plugin_utils.builder import (
    InputError,
    check_build_id,
    check_provision,
    expiry,
    prepare_state_dir,
    read_state,
)

ARGUMENT_SPEC: Dict[str, Any] = {
    "stage": {"type": "str", "default": "provision", "choices": ["provision", "teardown"]},
    "build_id": {"type": "raw", "required": True},
    "provider": {"type": "str", "required": True},
    "state_dir": {"type": "path", "required": True},
    "ttl_minutes": {"type": "int", "default": 180},
    "ssh_connection": {"type": "str", "default": "ssh"},
    "ssh_host": {"type": "str", "default": ""},
    "ssh_work_dir": {"type": "str", "default": ""},
    "ssh_cidr": {"type": "str", "default": ""},
    "ssh_cidr_detect": {"type": "bool", "default": False},
    "ssh_cidr_detect_url": {"type": "str", "default": ""},
}


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp: Optional[str] = None, task_vars: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        p = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)[1]
        try:
            if p["stage"] == "teardown":
                check_build_id(p["build_id"], teardown=True)
                result.update(changed=False, ansible_facts={"builder_host__state": read_state(p["state_dir"])})
                return result
            check_provision(p)
            if self._task.check_mode:
                result.update(changed=True, ansible_facts=expiry(p["ttl_minutes"], time.time()))
                return result
            made = prepare_state_dir(p)
        except InputError as exc:
            result.update(failed=True, msg=str(exc))
            return result
        except (OSError, subprocess.CalledProcessError) as exc:
            result.update(
                failed=True, msg="Preparing the build's state directory %s failed: %s" % (p["state_dir"], exc)
            )
            return result
        facts = dict(made["facts"], **expiry(p["ttl_minutes"], time.time()))
        result.update(changed=bool(made["made"]), keys_made=made["made"], ansible_facts=facts)
        return result

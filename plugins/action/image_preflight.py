# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin: check every input of a pipeline's build that the controller alone can
judge, before anything is created (plugin_utils/_preflight.py)."""

from __future__ import annotations

import os
from typing import Any, Dict

from ansible_collections.nixforge.images.plugins.plugin_utils._action import ControllerAction
from ansible_collections.nixforge.images.plugins.plugin_utils._preflight import problems, role_spec
from ansible_collections.nixforge.images.plugins.plugin_utils._task_vars import template_values

ARGUMENT_SPEC: Dict[str, Any] = {}
# The roles whose variables a pipeline's build uses (their main entry points).
ROLES = ("nixos_image", "nix_bootstrap", "nix_remote_builder")


class ActionModule(ControllerAction):
    argument_spec = ARGUMENT_SPEC

    def act(self, result: Dict[str, Any], _params: Dict[str, Any], task_vars: Dict[str, Any]) -> Dict[str, Any]:
        # The role variables as this task sees them (play vars, -e, role defaults), templated.
        names = {"nixos_image_build_mode"}
        for role in ROLES:
            names.update(role_spec(role))
        values, unusable = template_values(self._templar, task_vars, sorted(names))
        mode = str(values.get("nixos_image_build_mode", "builder"))
        found = unusable or problems(values, mode, os.getcwd())
        result.update(changed=False, problems=found)
        if len(found) == 1:
            result.update(failed=True, msg="Nothing was created: %s" % found[0])
        elif found:
            listed = " ".join("(%d) %s" % (i + 1, p) for i, p in enumerate(found))
            result.update(failed=True, msg="Nothing was created: %d problems: %s" % (len(found), listed))
        else:
            result["msg"] = "The inputs the controller can check are fine."
        return result

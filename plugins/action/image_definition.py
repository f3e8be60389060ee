# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin: check the nixos_image role's inputs on the controller and resolve
what to build (plugin_utils/image.py), before anything runs on the builder."""

from __future__ import annotations

import os
from typing import Any, Dict

from ansible_collections.nixforge.images.plugins.plugin_utils._action import ControllerAction
from ansible_collections.nixforge.images.plugins.plugin_utils.image import InputError, resolve_image

ARGUMENT_SPEC: Dict[str, Any] = {
    "kind": {"type": "str", "default": "sd-aarch64"},
    "flake": {"type": "str", "default": ""},
    "attribute": {"type": "str", "default": ""},
    "module": {"type": "str", "default": ""},
    "work_dir": {"type": "str", "default": "/var/tmp/nixforge-image"},  # noqa: S108 - on the builder, the role's default
    "images_dir": {"type": "path"},
}


class ActionModule(ControllerAction):
    argument_spec = ARGUMENT_SPEC

    def act(self, result: Dict[str, Any], params: Dict[str, Any], task_vars: Dict[str, Any]) -> Dict[str, Any]:
        try:
            plan = resolve_image(params, os.getcwd())
        except InputError as exc:
            result.update(failed=True, msg=str(exc))
            return result
        result.update(changed=False, definition=plan)
        return result

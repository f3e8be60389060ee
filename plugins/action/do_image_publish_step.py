# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin: the role do_image_publish's own steps on the controller: check its inputs,
stop with the reason when a step failed, and make its published result. The logic is in
plugin_utils/_publish.py; documentation in plugins/modules/do_image_publish_step.py."""

from __future__ import annotations

from typing import Any, Dict, Mapping

from ansible_collections.nixforge.images.plugins.plugin_utils._action import ControllerAction
from ansible_collections.nixforge.images.plugins.plugin_utils._publish import (
    ROLE_VARIABLES,
    PublishError,
    boot_failure,
    check_inputs,
    existing_image,
    preflight_failure,
    publish_failure,
    publish_result,
    published_image,
)
from ansible_collections.nixforge.images.plugins.plugin_utils._task_vars import template_values

OUTCOME = {"type": "dict", "default": {}}
# keep in step with DOCUMENTATION in plugins/modules/do_image_publish_step.py
ARGUMENT_SPEC: Dict[str, Any] = {
    "step": {
        "type": "str",
        "required": True,
        "choices": ["check", "planned", "preflight_failed", "published", "booted", "result"],
    },
    "entry_point": {"type": "str", "choices": ["main", "preflight"], "default": "main"},
    "parameter": {"type": "str", "default": ""},
    "msg": {"type": "str", "default": ""},
    "planned": OUTCOME,
    "lookup": OUTCOME,
    "upload": OUTCOME,
    "imported": OUTCOME,
    "image_removal": OUTCOME,
    "published": OUTCOME,
    "object_removal": OUTCOME,
    "boot": OUTCOME,
    "unbootable_removal": OUTCOME,
}


class ActionModule(ControllerAction):
    argument_spec = ARGUMENT_SPEC

    def act(self, result: Dict[str, Any], params: Dict[str, Any], task_vars: Dict[str, Any]) -> Dict[str, Any]:
        try:
            result.update(step(params, self.role_values(task_vars)))
        except PublishError as exc:
            result.update(failed=True, msg=str(exc))
        result.setdefault("changed", False)
        return result

    def role_values(self, task_vars: Mapping[str, Any]) -> Dict[str, Any]:
        """The role's variables as this task sees them (role defaults, play vars, -e), templated."""
        values, unusable = template_values(self._templar, task_vars, ROLE_VARIABLES)
        if unusable:
            raise PublishError(unusable[0])
        return values


def step(args: Mapping[str, Any], values: Mapping[str, Any]) -> Dict[str, Any]:
    """One step: {} (or the step's values) when the role goes on; PublishError when it stops."""
    name = args["step"]
    if name == "check":
        check_inputs(values, args["entry_point"])
        return {"msg": "The inputs are set."}
    if name == "planned":  # the preflight's answer: the build's image if a re-run finds it
        return {"existing": existing_image(args["planned"])}
    if name == "preflight_failed":  # only ever called in a rescue: it always stops
        raise PublishError(preflight_failure(args["parameter"], args["msg"]))
    if name == "published":
        stop = publish_failure(values, args["upload"], args["imported"], args["image_removal"])
        if stop:
            raise PublishError(stop)
        image = published_image(args["lookup"], args["imported"])
        return {"image": image, "imported": bool(args["imported"].get("imported"))}
    if name == "booted":
        stop = boot_failure(values, args["boot"], args["unbootable_removal"])
        if stop:
            raise PublishError(stop)
        return {}
    return publish_result(values, args["published"], args["upload"], args["object_removal"], args["boot"])

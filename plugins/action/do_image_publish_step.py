# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin: the role do_image_publish's own steps on the controller: the preflight (its
inputs, then the import and the upload planned in check mode), the stop with the reason when a
step failed, and the published result. The logic is in plugin_utils/_publish.py; documentation
in plugins/modules/do_image_publish_step.py."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Mapping

from ansible_collections.nixforge.images.plugins.plugin_utils._action import NixforgeAction
from ansible_collections.nixforge.images.plugins.plugin_utils._publish import (
    ROLE_VARIABLES,
    PublishError,
    boot_failure,
    check_inputs,
    existing_image,
    preflight_failure,
    preflight_url,
    publish_failure,
    publish_result,
    published_image,
    result_sentence,
)
from ansible_collections.nixforge.images.plugins.plugin_utils._task_vars import template_values

OUTCOME = {"type": "dict", "default": {}}
# keep in step with DOCUMENTATION in plugins/modules/do_image_publish_step.py
ARGUMENT_SPEC: Dict[str, Any] = {
    "step": {"type": "str", "required": True, "choices": ["preflight", "check", "published", "booted", "result"]},
    "import_options": OUTCOME,
    "upload_options": OUTCOME,
    "lookup": OUTCOME,
    "upload": OUTCOME,
    "imported": OUTCOME,
    "image_removal": OUTCOME,
    "published": OUTCOME,
    "object_removal": OUTCOME,
    "boot": OUTCOME,
    "unbootable_removal": OUTCOME,
}


class ActionModule(NixforgeAction):
    argument_spec = ARGUMENT_SPEC

    def act(self, result: Dict[str, Any], params: Dict[str, Any], task_vars: Dict[str, Any]) -> Dict[str, Any]:
        try:
            values = self.role_values(task_vars)
            if params["step"] == "preflight":
                result.update(self.preflight(params, values, task_vars))
            else:
                result.update(step(params, values))
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

    def preflight(
        self, params: Mapping[str, Any], values: Mapping[str, Any], task_vars: Dict[str, Any]
    ) -> Dict[str, Any]:
        """Before a builder is paid for: the inputs, then do_custom_image and b2_object in check
        mode with the options the main entry point will use (nothing is created, uploaded or
        imported). The upload is planned with an empty stand-in file in Ansible's remote tmp."""
        check_inputs(values, "preflight")
        upload = dict(params["upload_options"], state="present")
        image = dict(params["import_options"], state="present", url=preflight_url(upload.get("url_mode")))
        warnings: List[Any] = []
        planned = self._plan("nixforge.images.do_custom_image", image, task_vars, warnings)
        tmpdir = self._make_tmp_path()
        try:
            standin = self._connection._shell.join_path(tmpdir, "preflight.qcow2.gz")
            self._transfer_data(standin, "")
            self._plan("nixforge.images.b2_object", dict(upload, src=standin), task_vars, warnings)
        finally:
            self._remove_tmp_path(tmpdir)
        # the modules' own warnings, shown as the task's (Ansible displays a result's warnings)
        return dict({"existing": existing_image(planned)}, **({"warnings": warnings} if warnings else {}))

    def _plan(
        self, module: str, args: Dict[str, Any], task_vars: Dict[str, Any], warnings: List[Any]
    ) -> Dict[str, Any]:
        """``module`` in check mode; PublishError led by the variable to fix when it fails."""
        with self._check_mode():
            outcome = self._execute_module(module_name=module, module_args=args, task_vars=task_vars)
        warnings.extend(outcome.get("warnings") or [])
        if outcome.get("failed"):
            raise PublishError(preflight_failure(str(outcome.get("parameter") or ""), str(outcome.get("msg") or "")))
        return outcome

    @contextmanager
    def _check_mode(self) -> Iterator[None]:
        """Check mode for the modules run inside this step, whatever the task's own mode."""
        before = self._task.check_mode
        self._task.check_mode = True
        try:
            yield
        finally:
            self._task.check_mode = before


def step(args: Mapping[str, Any], values: Mapping[str, Any]) -> Dict[str, Any]:
    """One step: {} (or the step's values) when the role goes on; PublishError when it stops."""
    name = args["step"]
    if name == "check":
        check_inputs(values, "main")
        return {"msg": "The inputs are set."}
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
    done = publish_result(values, args["published"], args["upload"], args["object_removal"], args["boot"])
    # shown at every verbosity, as a debug task would be
    return dict(done, msg=result_sentence(done), _ansible_verbose_always=True)

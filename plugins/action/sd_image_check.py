# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin: check a fetched SD image on the controller (partition table, both file
systems, the boot loader's configuration), without root (plugin_utils/_sd_image.py)."""

from __future__ import annotations

import os
import time
from typing import Any, Dict

from ansible_collections.nixforge.images.plugins.plugin_utils._action import ControllerAction
from ansible_collections.nixforge.images.plugins.plugin_utils._sd_image import ImageError, check_image, missing_tools

ARGUMENT_SPEC: Dict[str, Any] = {
    "path": {"type": "path", "required": True},
    "files": {"type": "list", "elements": "str", "default": ["/boot/extlinux/extlinux.conf"]},
    "timeout": {"type": "int", "default": 1800},
    "tmp_dir": {"type": "path"},
    "keep_corrupt": {"type": "bool", "default": False},
}


class ActionModule(ControllerAction):
    argument_spec = ARGUMENT_SPEC

    def act(self, result: Dict[str, Any], params: Dict[str, Any], _task_vars: Dict[str, Any]) -> Dict[str, Any]:
        path = os.path.abspath(params["path"])
        result.update(changed=False, path=path, partitions=[], summary=[], removed=False)
        problem = self._input_problem(path, params)
        if problem:
            # In check mode nothing was fetched: there is nothing to check yet.
            if self._task.check_mode and not os.path.exists(path):
                result.update(skipped=True, msg="would check %s" % path)
                return result
            result.update(failed=True, msg=problem)
            return result
        started = time.monotonic()
        try:
            parts = check_image(path, params["files"], params["timeout"], params["tmp_dir"])
        except (ImageError, OSError) as exc:
            result.update(failed=True, seconds=round(time.monotonic() - started, 1))
            result["msg"] = self._failure(path, str(exc), params["keep_corrupt"], result)
            return result
        result.update(
            partitions=[p.as_dict() for p in parts],
            summary=[p.describe() for p in parts],
            seconds=round(time.monotonic() - started, 1),
        )
        return result

    @staticmethod
    def _input_problem(path: str, params: Dict[str, Any]) -> str:
        if not os.path.isfile(path):
            return "path: %s is not a file on the controller." % path
        if params["timeout"] < 1:
            return "timeout must be a positive number of seconds, got %d." % params["timeout"]
        missing = missing_tools()
        if missing:
            return (
                "The SD image check needs %s on the controller (scripts/system-packages.txt, bindep.txt list them)."
                % ", ".join(missing)
            )
        return ""

    @staticmethod
    def _failure(path: str, reason: str, keep: bool, result: Dict[str, Any]) -> str:
        """The message of a corrupt image; the image is removed unless kept, so that nobody
        writes a card from it."""
        if keep:
            return "The SD image %s is corrupt: %s. It is kept (keep_corrupt) for inspection." % (path, reason)
        try:
            os.unlink(path)
            result["removed"] = True
            kept = "It was removed (keep_corrupt: true keeps it for inspection)."
        except OSError as exc:
            kept = "Removing it failed too (%s): delete it by hand." % exc
        return "The SD image %s is corrupt: %s. %s" % (path, reason, kept)

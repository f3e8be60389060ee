# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin: the pipelines' bookkeeping steps on the controller (plugin_utils/_pipeline.py);
documentation in plugins/modules/pipeline_step.py.

Each step answers in its result, which the playbooks register (nixforge__build, nixforge__failure,
...), never in ansible_facts: facts would be read as top-level variables, which ansible-core 2.20
deprecates (INJECT_FACTS_AS_VARS), and would be kept in a persistent fact cache, from which a later
run could read a stale build.

A step with something to tell the user (start: the build's name; retry: what happens after a spot
interruption; report: the summary) says it in ``msg`` and shows its result as ``debug`` does, so
that no separate debug task (a task header and a worker fork each) repeats it."""

from __future__ import annotations

import time
from typing import Any, Dict

from ansible_collections.nixforge.images.plugins.filter.spot_retry import spot_retry
from ansible_collections.nixforge.images.plugins.plugin_utils._action import ControllerAction
from ansible_collections.nixforge.images.plugins.plugin_utils._pipeline import (
    PipelineError,
    failure_text,
    report,
    start_build,
)

ARGUMENT_SPEC: Dict[str, Any] = {
    "step": {"type": "str", "required": True, "choices": ["start", "failed", "stop", "gone", "retry", "report"]},
    "kind": {"type": "str", "choices": ["do", "sd-aarch64"], "default": "sd-aarch64"},
    "stage": {"type": "bool", "default": False},
    "given": {"type": "dict", "default": {}},
    "task": {"type": "str", "default": ""},
    "msg": {"type": "raw", "default": ""},
    "host": {"type": "str", "default": ""},
    "interrupted": {"type": "dict", "default": {}},
    "error": {"type": "str", "default": ""},
    "build_id": {"type": "str", "default": ""},
    "report": {"type": "dict", "default": {}},
    "retry": {"type": "dict", "default": {}},
    "previous": {"type": "dict", "default": {}},
}


class ActionModule(ControllerAction):
    argument_spec = ARGUMENT_SPEC

    def act(self, result: Dict[str, Any], params: Dict[str, Any], _task_vars: Dict[str, Any]) -> Dict[str, Any]:
        try:
            result.update(self.step(params))
        except PipelineError as exc:
            result.update(failed=True, msg=str(exc))
        result.setdefault("changed", False)
        if result.get("msg") and not result.get("failed"):
            result["_ansible_verbose_always"] = True  # shown without -v, as debug's msg is
        return result

    def step(self, args: Dict[str, Any]) -> Dict[str, Any]:
        step = args["step"]
        if step == "start":
            build = start_build(args["kind"], args["given"], args["stage"], args["previous"])
            build["msg"] = "Build %s (pipeline %s, build mode %s)" % (
                build["build_id"],
                build["pipeline"],
                build["build_mode"],
            )
            return build
        if step == "failed":  # a failure handed to the plays after this one
            return {
                "error": failure_text(args["task"], args["msg"], args["host"]),
                "interrupted": args["interrupted"],
            }
        if step == "stop":
            raise PipelineError("Build %s: %s" % (args["build_id"], args["error"]))
        if step == "gone":
            return {"gone_epoch": int(time.time())}
        if step == "retry":
            plan = self.retry(args["retry"])
            if plan["earlier"]:
                plan["msg"] = retry_message(args["build_id"], plan)
            return plan
        return {"msg": report(dict(args["report"], kind=args["kind"]))}

    def retry(self, given: Dict[str, Any]) -> Dict[str, Any]:
        """Whether a build EC2 interrupted (spot) runs once more on a fresh builder, and on which:
        the plan (retry, instance_types, market, earlier, reason)."""
        return spot_retry(
            given.get("interrupted") or {},
            given.get("builder") or {},
            enabled=bool(given.get("enabled", True)),
            instance_types=given.get("instance_types") or [],
            on_demand_fallback=bool(given.get("on_demand_fallback")),
            gone_epoch=given.get("gone_epoch") or 0,
            architecture=given.get("architecture") or "arm64",
        )


def retry_message(build_id: str, plan: Dict[str, Any]) -> str:
    """What happens after EC2 interrupted the build's builder (spot)."""
    then = (
        "Building once more on a fresh builder (%s)." % plan["reason"]
        if plan["retry"]
        else "No retry: %s." % plan["reason"]
    )
    return "Build %s was interrupted by EC2 (spot) on %s. %s" % (build_id, plan["earlier"][-1]["line"], then)

# Not part of the collection: benchmarks/pipeline.py loads it through
# ANSIBLE_CALLBACK_PLUGINS to time every task of a playbook run.
"""Record when each task started and ended, on which host, in which role and file."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: nixforge_timing
type: aggregate
short_description: write each task's timing to NIXFORGE_TIMING_FILE (JSON lines)
description:
  - Used by benchmarks/pipeline.py only.
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "nixforge_timing"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self._path = os.environ.get("NIXFORGE_TIMING_FILE", "")
        self._play = ""
        self._task: dict[str, Any] | None = None
        self._fh = open(self._path, "a", encoding="utf-8") if self._path else None

    def _close_task(self) -> None:
        if self._task is not None and self._fh is not None:
            self._task["end"] = time.time()
            self._fh.write(json.dumps(self._task) + "\n")
            self._fh.flush()
        self._task = None

    def v2_playbook_on_play_start(self, play: Any) -> None:
        self._close_task()
        self._play = play.get_name()

    def _start(self, task: Any, kind: str) -> None:
        self._close_task()
        role = task._role.get_name(include_role_fqcn=False) if task._role else ""
        self._task = {
            "play": self._play,
            "name": task.get_name(),
            "action": task.action,
            "role": role,
            "path": task.get_path() or "",
            "kind": kind,
            "start": time.time(),
            "hosts": {},
            "facts": {},
        }

    def v2_playbook_on_task_start(self, task: Any, is_conditional: bool) -> None:
        self._start(task, "task")

    def v2_playbook_on_handler_task_start(self, task: Any) -> None:
        self._start(task, "handler")

    def _result(self, result: Any, status: str) -> None:
        if self._task is None:
            return
        self._task["hosts"][result._host.get_name()] = status
        facts = result._result.get("ansible_facts") or {}
        for key in ("nixos_image_result", "nixos_image_fetch_result"):
            if key in facts:
                self._task["facts"][key] = facts[key]
        # nix_bootstrap_plan installs the missing packages in the same step: its apt time
        if "install_seconds" in result._result:
            self._task["install_seconds"] = float(result._result["install_seconds"])

    def v2_runner_on_ok(self, result: Any) -> None:
        self._result(result, "ok")

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        self._result(result, "failed")

    def v2_runner_on_skipped(self, result: Any) -> None:
        self._result(result, "skipped")

    def v2_runner_on_unreachable(self, result: Any) -> None:
        self._result(result, "unreachable")

    def v2_playbook_on_stats(self, stats: Any) -> None:
        self._close_task()
        if self._fh is not None:
            self._fh.close()
            self._fh = None

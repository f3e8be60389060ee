# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Test-only notification callback: every task result as one JSON line in the file named
by NIXFORGE_RECORD_FILE, so that tests assert on structured results, not on stdout."""

from __future__ import annotations

import json
import os
from typing import Any

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: nixforge_record
type: notification
short_description: Write every task result as a JSON line (tests only)
description:
  - Appends one JSON object per task result to the file in E(NIXFORGE_RECORD_FILE).
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "nixforge_record"
    CALLBACK_NEEDS_ENABLED = True

    def _write(self, status: str, result: Any) -> None:
        path = os.environ.get("NIXFORGE_RECORD_FILE")
        if not path:
            return
        line = {
            "status": status,
            "task": result._task.get_name(),
            "host": result._host.get_name(),
            "result": self._clean(result._result),
        }
        with open(path, "a") as fh:
            fh.write(json.dumps(line, default=str) + "\n")

    @staticmethod
    def _clean(data: Any) -> Any:
        try:
            return json.loads(json.dumps(data, default=str))
        except (TypeError, ValueError):
            return {"unserialisable": str(data)}

    def v2_runner_on_ok(self, result: Any) -> None:
        self._write("ok", result)

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        self._write("ignored" if ignore_errors else "failed", result)

    def v2_runner_on_unreachable(self, result: Any) -> None:
        self._write("unreachable", result)

    def v2_runner_on_skipped(self, result: Any) -> None:
        self._write("skipped", result)

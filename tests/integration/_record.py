"""Structured results of a playbook run for the tests: the test-only callback
callback_plugins/nixforge_record.py writes every task result as a JSON line; tests assert
on the failing task's result instead of searching stdout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CALLBACKS = Path(__file__).resolve().parent / "callback_plugins"


def recording(env: dict[str, str], record: Path) -> dict[str, str]:
    """`env` plus the settings that make ansible-playbook record its results in `record`."""
    return dict(
        env,
        ANSIBLE_CALLBACK_PLUGINS=str(CALLBACKS),
        ANSIBLE_CALLBACKS_ENABLED="nixforge_record",
        NIXFORGE_RECORD_FILE=str(record),
    )


def records(record: Path) -> list[dict[str, Any]]:
    if not record.exists():
        return []
    return [json.loads(line) for line in record.read_text().splitlines() if line.strip()]


def results_of(recorded: list[dict[str, Any]], task_start: str, status: str | None = None) -> list[dict[str, Any]]:
    """Recorded results of the tasks whose name (without the role prefix) starts with task_start."""
    return [
        r
        for r in recorded
        if r["task"].split(" : ", 1)[-1].startswith(task_start) and (status is None or r["status"] == status)
    ]


def result_of(recorded: list[dict[str, Any]], task_start: str, status: str | None = None) -> dict[str, Any]:
    """The last recorded result of such a task (the test fails when there is none)."""
    found = results_of(recorded, task_start, status)
    assert found, f"no {status or ''} result of {task_start!r}: {[(r['task'], r['status']) for r in recorded]}"
    return found[-1]


def failures(recorded: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in recorded if r["status"] in ("failed", "unreachable")]

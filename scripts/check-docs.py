"""Fail unless ansible-doc renders every plugin and every role of the collection.

Runs from the repository root with the collection reachable through
ANSIBLE_COLLECTIONS_PATH (see `make collection`).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COLLECTION = "nixforge.images"
# plugins/<folder> -> ansible-doc plugin type
# the first line of each rendered plugin, whatever the path after it holds
HEADER = re.compile(r"^> [A-Z]+:? \*?([\w.]+?)\*? \(", re.MULTILINE)
PLUGIN_TYPES = {"modules": "module", "inventory": "inventory", "filter": "filter", "lookup": "lookup"}


def targets() -> list[tuple[str, str]]:
    found = []
    for folder, kind in PLUGIN_TYPES.items():
        for path in sorted((ROOT / "plugins" / folder).glob("*.py")):
            if path.name != "__init__.py":
                found.append((kind, path.stem))
    for role in sorted((ROOT / "roles").glob("*/meta/argument_specs.yml")):
        found.append(("role", role.parent.parent.name))
    return found


def render(kind: str, names: list[str]) -> list[str]:
    """One ansible-doc process for every plugin of a kind (a process each cost a second of CPU
    apiece); the problems: a name without its rendered header, or anything on stderr."""
    ansible_doc = Path(sys.executable).with_name("ansible-doc")
    proc = subprocess.run(
        [str(ansible_doc), "-t", kind, *(f"{COLLECTION}.{name}" for name in names)],
        capture_output=True,
        text=True,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1", "PAGER": "cat"},
        check=False,
    )
    # the header of each rendered plugin: "> MODULE nixforge.images.x (...)", "> ROLE: *nixforge.images.x* (...)"
    headers = {m.group(1) for m in HEADER.finditer(proc.stdout)}
    problems = [f"{kind} {name}: not rendered" for name in names if f"{COLLECTION}.{name}" not in headers]
    if proc.returncode != 0 or proc.stderr.strip():
        problems.append(f"{kind} (exit {proc.returncode}): {proc.stderr.strip()}")
    return problems


def main() -> int:
    by_kind: dict[str, list[str]] = {}
    for kind, name in targets():
        if kind != "filter":  # filter files hold several filters; each has its own YAML doc file
            by_kind.setdefault(kind, []).append(name)
    failures = []
    for kind, names in by_kind.items():
        if render(kind, names):
            # ansible-doc stops at the first plugin it cannot render: one by one, to name each
            failures += [problem for name in names for problem in render(kind, [name])]
    for failure in failures:
        print(f"ansible-doc failed: {failure}", file=sys.stderr)
    checked = sum(len(names) for names in by_kind.values())
    print(
        f"ansible-doc rendered {checked} plugins and roles"
        if not failures
        else f"ansible-doc: {len(failures)} problem(s)"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

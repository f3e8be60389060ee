"""Fail unless ansible-doc renders every plugin and every role of the collection.

Runs from the repository root with the collection reachable through
ANSIBLE_COLLECTIONS_PATH (see `make collection`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COLLECTION = "nixforge.images"
# plugins/<folder> -> ansible-doc plugin type
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


def main() -> int:
    ansible_doc = Path(sys.executable).with_name("ansible-doc")
    failures = []
    checked = 0
    for kind, name in targets():
        if kind == "filter":
            continue  # filter files hold several filters; each has its own YAML doc file
        proc = subprocess.run(
            [str(ansible_doc), "-t", kind, f"{COLLECTION}.{name}"],
            capture_output=True,
            text=True,
            env={**os.environ, "ANSIBLE_NOCOLOR": "1", "PAGER": "cat"},
            check=False,
        )
        checked += 1
        if proc.returncode != 0 or "ERROR" in proc.stderr or not proc.stdout.strip():
            failures.append(f"{kind} {name}: {proc.stderr.strip() or 'empty output'}")
    for failure in failures:
        print(f"ansible-doc failed: {failure}", file=sys.stderr)
    print(f"ansible-doc rendered {checked - len(failures)}/{checked} plugins and roles")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

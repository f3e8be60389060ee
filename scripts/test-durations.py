"""Write tests/integration/durations.json from a JUnit XML of a `make test` run: the seconds each
sandbox test and static check took, which tests/integration/conftest.py uses to hand out the
longest work first (a scheduling hint: no test is timed by it).

    python scripts/test-durations.py run.xml      # e.g. make test PYTEST_ARGS=--junitxml=run.xml
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "integration" / "durations.json"


def main(junit: str) -> int:
    seconds: dict[str, int] = {}
    for case in ET.parse(junit).iter("testcase"):  # noqa: S314 - pytest's own report
        module = case.get("classname", "").replace(".", "/") + ".py"
        if module.startswith(("tests/integration/", "tests/checks/")):
            name = case.get("name", "").split("@", 1)[0]
            seconds[f"{module}::{name}"] = max(1, round(float(case.get("time", 0))))
    OUT.write_text(json.dumps(dict(sorted(seconds.items())), indent=0) + "\n")
    print(f"{OUT.relative_to(ROOT)}: {len(seconds)} tests, {sum(seconds.values())} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

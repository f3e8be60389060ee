"""tests/README.md's promise table cites, for every row, tests that exist.

A renamed or deleted test would otherwise leave a promise that nothing proves any more while
the table still says it is proven."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "tests" / "README.md"
TEST_DIRS = ("tests/integration", "tests/unit", "tests/checks", "tests/matrix", "benchmarks")
# `file.py` or `file.py::test_name` or `file.py::test_name[param]`, a bare name or a path
CITATION = re.compile(r"`([\w./-]+\.py)(?:::(\w+)(?:\[[^\]`]*\])?)?`")


def promise_rows() -> list[tuple[str, str]]:
    text = README.read_text()
    table = text.split("## What each promise of the collection is proven by", 1)[1]
    rows = []
    for line in table.splitlines():
        if not line.startswith("| "):
            if rows:
                break  # the table ended
            continue
        promise, _sep, proof = line[2:].partition(" | ")
        if promise not in ("promise", "---"):
            rows.append((promise.strip(), proof))
    return rows


def resolve(name: str) -> Path | None:
    if "/" in name:
        path = ROOT / name
        return path if path.is_file() else None
    for top in TEST_DIRS:
        found = sorted((ROOT / top).rglob(name))
        if found:
            return found[0]
    return None


def test_the_table_is_found() -> None:
    assert len(promise_rows()) >= 40


@pytest.mark.parametrize("promise, proof", promise_rows(), ids=lambda v: v[:60] if isinstance(v, str) else v)
def test_every_promise_cites_tests_that_exist(promise: str, proof: str) -> None:
    citations = CITATION.findall(proof)
    assert citations, "the promise %r cites no test file" % promise
    for name, function in citations:
        path = resolve(name)
        assert path is not None, "%r cites %s, which does not exist" % (promise, name)
        if function:
            assert re.search(r"^(async )?def %s\(" % re.escape(function), path.read_text(), re.M), (
                "%r cites %s::%s, which %s does not define" % (promise, name, function, path.relative_to(ROOT))
            )

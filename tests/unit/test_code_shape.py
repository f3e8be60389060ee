"""The size limits of the project's standards, enforced: no Python file in plugins/ over
600 lines (documentation included), no function or method there over 80 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 80
FILES = sorted(PLUGINS.rglob("*.py"))


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int]]:
    """``(name, lines)`` of each function longer than ``limit`` (from ``def`` to its last line)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            if lines > limit:
                out.append((node.name, lines))
    return out


def test_the_walk_finds_the_plugins() -> None:
    assert len(FILES) > 20 and PLUGINS / "modules" / "ec2_spot_host.py" in FILES


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PLUGINS)))
def test_no_file_over_600_lines(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_FILE_LINES, f"{path.relative_to(PLUGINS)} has {lines} lines: move its engine to module_utils"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PLUGINS)))
def test_no_function_over_80_lines(path: Path) -> None:
    assert long_functions(path.read_text(encoding="utf-8")) == [], f"split these in {path.relative_to(PLUGINS)}"


def test_long_functions_counts_from_def_to_the_last_line() -> None:
    body = "".join("    x%d = %d\n" % (i, i) for i in range(80))
    assert long_functions("def short():\n" + body[: body.index("x79")] + "\n") == []
    assert long_functions("class C:\n    def long(self):\n" + body.replace("    ", "        ")) == [("long", 81)]

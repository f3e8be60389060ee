"""The size limits of the project's standards, enforced over plugins/: no function or method
over 60 lines, and no file over 600 lines of code. A module's DOCUMENTATION, EXAMPLES and
RETURN strings (and a doc fragment's) are not code, so documenting an option never
competes with the code for room."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"
MAX_CODE_LINES = 600
MAX_FUNCTION_LINES = 60
DOC_STRINGS = frozenset({"DOCUMENTATION", "EXAMPLES", "RETURN"})
FILES = sorted(PLUGINS.rglob("*.py"))


def _lines(node: ast.AST) -> int:
    return (getattr(node, "end_lineno", None) or node.lineno) - node.lineno + 1  # type: ignore[attr-defined]


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int]]:
    """``(name, lines)`` of each function longer than ``limit`` (from ``def`` to its last line)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = _lines(node)
            if lines > limit:
                out.append((node.name, lines))
    return out


def code_lines(source: str) -> int:
    """The file's lines less those of its DOCUMENTATION / EXAMPLES / RETURN assignments, wherever
    they are (module level in a module, class level in a doc fragment)."""
    docs = 0
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id in DOC_STRINGS for t in node.targets):
            docs += _lines(node)
    return len(source.splitlines()) - docs


def test_the_walk_finds_the_plugins() -> None:
    assert len(FILES) > 20 and PLUGINS / "modules" / "ec2_spot_host.py" in FILES


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PLUGINS)))
def test_no_file_over_600_lines_of_code(path: Path) -> None:
    lines = code_lines(path.read_text(encoding="utf-8"))
    assert lines <= MAX_CODE_LINES, f"{path.relative_to(PLUGINS)} has {lines} lines of code: split it by what it does"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PLUGINS)))
def test_no_function_over_60_lines(path: Path) -> None:
    assert long_functions(path.read_text(encoding="utf-8")) == [], f"split these in {path.relative_to(PLUGINS)}"


def test_long_functions_counts_from_def_to_the_last_line() -> None:
    body = "".join("    x%d = %d\n" % (i, i) for i in range(60))
    assert long_functions("def short():\n" + body[: body.index("x59")] + "\n") == []
    assert long_functions("class C:\n    def long(self):\n" + body.replace("    ", "        ")) == [("long", 61)]


def test_code_lines_leaves_out_the_documentation_only() -> None:
    module = 'DOCUMENTATION = r"""\na\nb\n"""\nEXAMPLES = "x"\nRETURN = """\nc\n"""\nOTHER = """\nd\n"""\nx = 1\n'
    assert code_lines(module) == 4  # OTHER's three lines and x
    fragment = 'class ModuleDocFragment:\n    DOCUMENTATION = r"""\n    a\n    """\n'
    assert code_lines(fragment) == 1
    assert code_lines("x = 1\n\ny = 2\n") == 3

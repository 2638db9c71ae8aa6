"""Shape rules for the library's code: no function in docre/ longer than 80 lines (a function that
does not fit on a screen does several jobs; split it along them)."""

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 80


def function_lengths() -> dict[str, int]:
    """{"path:function": lines from its `def` (decorators excluded) to its last line} over docre/."""
    lengths = {}
    for path in sorted((ROOT / "docre").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lengths[f"{path.relative_to(ROOT)}:{node.lineno}:{node.name}"] = node.end_lineno - node.lineno + 1
    return lengths


def test_no_function_in_docre_is_longer_than_80_lines():
    lengths = function_lengths()
    assert len(lengths) > 200  # the walk really sees the package
    too_long = {name: n for name, n in lengths.items() if n > LIMIT}
    assert not too_long, f"functions over {LIMIT} lines: {too_long}"


def test_the_measure_counts_a_long_function(tmp_path, monkeypatch):
    # the rule can fail: a 81-line function in a package folder is reported
    package = tmp_path / "docre"
    package.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(80))
    (package / "long.py").write_text(f"def long():\n{body}\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert function_lengths() == {"docre/long.py:1:long": 81}

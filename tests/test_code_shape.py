"""Shape rules for the library's code: no function in docre/ longer than 80 lines (a function that
does not fit on a screen does several jobs; split it along them), and no import cycle through the
trainer (the modules it uses must not need it)."""

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


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """{module: the docre modules it imports}, over docre/, counting imports at module level and
    inside functions alike (a function-level import is still a dependency, only a later one).
    `from pkg import name` counts pkg.name when that is a module, else pkg."""
    paths = {}
    for path in sorted((root / "docre").rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        paths[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for module, path in paths.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from . import x, from ..y import z
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                names = [f"{base}.{alias.name}" for alias in node.names]
                imported |= {name for name in names if name in paths}
                if not all(name in paths for name in names):
                    imported.add(base)
        graph[module] = {name for name in imported if name in paths and name != module}
    return graph


def cycles_through(graph: dict[str, set[str]], module: str) -> list[list[str]]:
    """Import chains module -> ... -> module (one shortest per first step), empty when there is none."""
    chains = []
    for first in sorted(graph.get(module, ())):
        paths, seen = [[module, first]], {first}
        while paths:
            path = paths.pop(0)
            if path[-1] == module:
                chains.append(path)
                break
            for following in sorted(graph.get(path[-1], ())):
                if following == module or following not in seen:
                    seen.add(following)
                    paths.append(path + [following])
    return chains


def test_no_import_cycle_passes_through_the_trainer():
    # The trainer sits at the top of the library: the grid, sweep and table code call it, it calls
    # down into data, models, losses and plots. A chain back up to it (trainer -> plots -> summary ->
    # tables -> sweep -> trainer once) means a low module depends on the whole training stack.
    graph = import_graph()
    assert {"docre.trainer", "docre.plots", "docre.sweep"} <= set(graph) and "docre.plots" in graph["docre.trainer"]
    assert cycles_through(graph, "docre.trainer") == []


def test_the_import_graph_sees_function_level_and_relative_imports(tmp_path):
    package = tmp_path / "docre"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from . import leaf\n")
    (package / "sub" / "leaf.py").write_text("def f():\n    from docre.trainer import train\n")
    (package / "trainer.py").write_text("import os\nfrom docre.sub.leaf import f\n")
    graph = import_graph(tmp_path)
    assert graph == {"docre": set(), "docre.sub": {"docre.sub.leaf"}, "docre.sub.leaf": {"docre.trainer"},
                     "docre.trainer": {"docre.sub.leaf"}}
    assert cycles_through(graph, "docre.trainer") == [["docre.trainer", "docre.sub.leaf", "docre.trainer"]]

"""The layering rules of issue 9, checked on the source: the CLI is a layer on top of the library, modules import
each other without cycles, methods are told apart by their declared contract (not by name), and functions stay short.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "acdc"
MAX_FUNCTION_LINES = 50
# Files allowed longer functions (relative to src/acdc); empty: every function is under the limit.
LONG_FUNCTION_EXCEPTIONS: set[str] = set()


def _layers():
    path = SRC.parents[1] / "tools" / "layers.py"
    spec = importlib.util.spec_from_file_location("acdc_tools_layers", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _sources() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def _rel(p: Path) -> str:
    return p.relative_to(SRC).as_posix()


def test_library_never_imports_the_cli():
    layers = _layers()
    graph = layers.import_graph(SRC)
    bad = {m: sorted(t for t in ts if t == "acdc.commands" or t.startswith("acdc.commands."))
           for m, ts in graph.items()
           if not (m == "acdc.cli" or m == "acdc.commands" or m.startswith("acdc.commands."))}
    assert {m: ts for m, ts in bad.items() if ts} == {}


def test_layer_graph_finds_a_planted_import(tmp_path):
    """The checker itself can fail: a library module importing commands is reported."""
    layers = _layers()
    pkg = tmp_path / "acdc"
    (pkg / "commands").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "commands" / "__init__.py").write_text("")
    (pkg / "commands" / "x.py").write_text("from ..lib import f\n")
    (pkg / "lib.py").write_text("def f():\n    from .commands.x import g\n")
    g = layers.import_graph(pkg)
    assert g["acdc.lib"] == {"acdc.commands.x"}
    assert layers.cycles(layers.import_graph(pkg, top_level_only=True)) == []
    (pkg / "lib.py").write_text("from .commands.x import g\n")
    assert layers.cycles(layers.import_graph(pkg, top_level_only=True)) == [["acdc.commands.x", "acdc.lib"]]


def test_no_import_cycle_between_modules():
    layers = _layers()
    assert layers.cycles(layers.import_graph(SRC, top_level_only=True)) == []


def _method_names() -> set[str]:
    names = set()
    for f in (SRC / "methods").glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "register" and node.args
                    and isinstance(node.args[0], ast.Constant)):
                names.add(node.args[0].value)
    return names


def _string_constants(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    return []


def test_no_method_name_comparisons_outside_the_registry():
    """`recipe.method_name == "dense"` / `"oneshot" in methods` decide by name; the method contract decides instead.

    A comparison counts when one side is a registered method name and another side's code mentions "method"
    (phase names such as `phase == "dense"` are not method names).
    """
    names = _method_names()
    assert {"acdc", "dense", "gmp"} <= names
    found = []
    for f in _sources():
        if f.parent.name == "methods" and "registry" in f.name:
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
                hits = [s for o in operands for s in _string_constants(o) if s in names]
                about_method = any("method" in ast.unparse(o).lower() for o in operands if not _string_constants(o))
                if hits and about_method:
                    found.append(f"{_rel(f)}:{node.lineno} {ast.unparse(node)}")
    assert found == []


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_functions_are_under_50_lines():
    long = []
    for f in _sources():
        if _rel(f) in LONG_FUNCTION_EXCEPTIONS:
            continue
        for fn in _functions(ast.parse(f.read_text())):
            n = fn.end_lineno - fn.lineno + 1
            if n >= MAX_FUNCTION_LINES:
                long.append(f"{_rel(f)}:{fn.lineno} {fn.name} {n}")
    assert long == []

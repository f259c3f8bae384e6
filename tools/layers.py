"""Print the import graph of ``src/acdc`` from the source (static, no import of acdc).

``python tools/layers.py`` prints, for each top-level module or package of acdc, the others it imports (any import,
also inside functions); ``--modules`` prints the module-level import graph between modules and any cycle in it.
docs/DESIGN.md's layer diagram is this script's output; tests/test_architecture.py uses the same functions.
"""

from __future__ import annotations

import argparse
import ast
import collections
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src" / "acdc"


def module_name(path: Path, root: Path = ROOT) -> str:
    """``src/acdc/train/loop.py`` -> ``acdc.train.loop``; a package's ``__init__.py`` -> the package."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, root: Path, top_level_only: bool) -> Iterator[tuple[str, int]]:
    """(imported acdc module, line) for each import in ``path``; module-level only when ``top_level_only``
    (else also dotted ``"acdc.x"`` strings, for modules imported by name)."""
    tree = ast.parse(path.read_text())
    pkg = module_name(path, root).split(".")
    if path.name != "__init__.py":
        pkg = pkg[:-1]
    nodes = tree.body if top_level_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.If) and top_level_only:  # e.g. `if TYPE_CHECKING:` is not a runtime import
            continue
        if isinstance(node, ast.ImportFrom):
            base = ".".join(pkg[: len(pkg) - node.level + 1]) if node.level else ""
            mod = ".".join(x for x in (base, node.module or "") if x)
            for a in node.names:  # `from . import x` may name a submodule
                yield (f"{mod}.{a.name}", node.lineno)
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield (a.name, node.lineno)
        elif (not top_level_only and isinstance(node, ast.Constant) and isinstance(node.value, str)
              and node.value.startswith("acdc.") and node.value.replace(".", "").replace("_", "").isalnum()):
            yield (node.value, node.lineno)  # a module imported by name (cli.py's importlib of the commands)


def import_graph(root: Path = ROOT, top_level_only: bool = False) -> dict[str, set[str]]:
    """Module -> acdc modules it imports (an imported name resolves to its module, or to the package it is in)."""
    files = {module_name(f, root): f for f in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, f in files.items():
        for target, _ in _imports(f, root, top_level_only):
            while target and target not in files:
                target = target.rpartition(".")[0]
            if target and target != mod:
                graph[mod].add(target)
    return graph


def unit(mod: str) -> str:
    """The layer a module belongs to: its top-level package or module under acdc."""
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Top-level unit -> units it imports (any import), the diagram of docs/DESIGN.md."""
    edges: dict[str, set[str]] = collections.defaultdict(set)
    for mod, targets in import_graph(root).items():
        edges[unit(mod)]
        for t in targets:
            if unit(t) != unit(mod) and t != "acdc":
                edges[unit(mod)].add(unit(t))
    return dict(edges)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each strongly connected component of more than one node (Tarjan), as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modules", action="store_true", help="module-level import graph between modules + cycles")
    args = ap.parse_args()
    if args.modules:
        g = import_graph(top_level_only=True)
        for m in sorted(g):
            if g[m]:
                print(f"{m} -> {', '.join(sorted(g[m]))}")
        print("cycles:", cycles(g) or "none")
        return
    g = layer_graph()
    for u in sorted(g):
        print(f"{u:14s} -> {', '.join(sorted(g[u])) or '(nothing in acdc)'}")


if __name__ == "__main__":
    main()

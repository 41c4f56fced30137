"""The import graph of pipeline/ and features/, read with `ast` (imports inside functions count):
no circle, no private name imported from another module, no typer/rich below pipeline's CLI edge."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "features")
CLI_EDGE = ("pipeline.commands", "pipeline.cli")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in sorted((REPO / pkg).rglob("*.py")):
            out[".".join(f.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")] = f
    return out


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, [names]) for every import statement; plain `import x.y` gives ('x.y', [])."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((a.name, []) for a in node.names)
    return found


def _graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    graph = {m: set() for m in mods}
    for m, path in mods.items():
        for module, names in _imports(path):
            for target in [module, *(f"{module}.{n}" for n in names)]:
                if target in mods and target != m:
                    graph[m].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    comps: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return comps


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle():
    assert _cycles(_graph(_modules())) == []


def test_no_private_name_imported_across_modules():
    bad = []
    for m, path in _modules().items():
        for module, names in _imports(path):
            if module.split(".")[0] not in PACKAGES:
                continue
            bad += [f"{m}: {module}.{n}" for n in names if n.startswith("_")]
            bad += [f"{m}: {module}" for part in module.split(".")[1:] if part.startswith("_")]
    assert bad == []


def test_typer_and_rich_only_at_the_cli_edge():
    bad = [f"{m}: {module}" for m, path in _modules().items() if m.startswith("pipeline")
           and not m.startswith(CLI_EDGE) for module, _ in _imports(path)
           if module.split(".")[0] in ("typer", "rich")]
    assert bad == []

"""The import graph of the whole project, read with `ast` (imports inside functions count):
no circle among features/, pipeline/ and train/ modules; features/ imports neither app and the
two apps never import each other (the manifest is their one interface); no private name imported
from another module (nor read as `module._name`), in project code or in tests; typer/rich only at
the CLI edge of the two apps."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
APPS = ("features", "pipeline", "train")  # the import graph checked for circles and layering
PROJECT = (*APPS, "benchmarks")  # code that may not use another module's private names
CLI_EDGE = ("pipeline.commands", "pipeline.cli", "train.commands", "train.cli")
# below the CLI edge yet allowed typer/rich, each with its reason
TYPER_ALLOWED = {
    # the click group class (a typer TyperGroup) that pipeline/cli.py and train/cli.py both use, so
    # that every user error of either app ends in one line and exit 2
    "features.cli_edge": "EdgeGroup subclasses typer.core.TyperGroup",
}


def _name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def _modules(packages: tuple[str, ...] = APPS) -> dict[str, Path]:
    return {_name(f): f for pkg in packages for f in sorted((REPO / pkg).rglob("*.py"))}


def _imports(path: Path, name: str | None = None) -> list[tuple[str, list[str]]]:
    """(module, [names]) for every import statement of module `name` (default: from its path),
    relative ones made absolute; plain `import x.y` gives ('x.y', [])."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                parts = (name or _name(path)).split(".")
                package = parts if path.name == "__init__.py" else parts[:-1]
                module = ".".join([*package[:len(package) - node.level + 1], *filter(None, [node.module])])
            found.append((module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((a.name, []) for a in node.names)
    return found


def _private_uses(path: Path, packages: tuple[str, ...]) -> list[str]:
    """`from pkg.mod import _name`, `import pkg._mod`, and `alias._name` where alias is a module
    or name imported from `packages` (the module's own names are its own business)."""
    own = _name(path) if path.is_relative_to(REPO) else ""
    bad, aliases = [], {}
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in packages:
                    aliases[a.asname or a.name.split(".")[0]] = a.name
                    bad += [a.name for part in a.name.split(".")[1:] if part.startswith("_")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] in packages and node.module != own:
            bad += [node.module for part in node.module.split(".")[1:] if part.startswith("_")]
            bad += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
            aliases.update((a.asname or a.name, f"{node.module}.{a.name}") for a in node.names)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            base, chain = node.value, []
            while isinstance(base, ast.Attribute):
                chain.insert(0, base.attr)
                base = base.value
            if isinstance(base, ast.Name) and base.id in aliases:
                bad.append(".".join([aliases[base.id], *chain, node.attr]))
    return [f"{own or path.name}: {b}" for b in bad]


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


def test_the_private_finder_finds_each_form(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import train.api as a\nfrom train import loop\nfrom train.x import _y, z\nimport train._p\n"
                 "def g():\n    return a._hidden, loop._step, z.public, a.__doc__\n")
    assert sorted(b.split(": ")[1] for b in _private_uses(f, PROJECT)) == \
        ["train._p", "train.api._hidden", "train.loop._step", "train.x._y"]


def test_the_import_reader_makes_relative_imports_absolute(tmp_path):
    f = tmp_path / "run.py"
    f.write_text("from . import eval\nfrom ..api import load\nimport typer\n")
    assert _imports(f, "train.commands.run") == [("train.commands", ["eval"]), ("train.api", ["load"]),
                                                 ("typer", [])]
    assert _name(REPO / "train" / "commands" / "__init__.py") == "train.commands"


def test_no_import_circle():
    assert _cycles(_graph(_modules())) == []


def test_features_imports_neither_app_and_the_apps_never_import_each_other():
    bad = []
    for m, path in _modules().items():
        mine = m.split(".")[0]
        for module, _ in _imports(path):
            theirs = module.split(".")[0]
            if theirs in APPS and theirs != mine and theirs != "features":
                bad.append(f"{m}: {module}")
    assert bad == []


def test_no_private_name_imported_across_modules():
    bad = [b for path in _modules(PROJECT).values() for b in _private_uses(path, PROJECT)]
    assert bad == []


def test_tests_use_no_private_name_of_the_project():
    bad = [b for path in sorted((REPO / "tests").glob("*.py")) for b in _private_uses(path, PROJECT)]
    assert bad == []


def test_typer_and_rich_only_at_the_cli_edge():
    mods = _modules()
    assert set(TYPER_ALLOWED) <= set(mods)
    bad = [f"{m}: {module}" for m, path in mods.items()
           if not m.startswith(CLI_EDGE) and m not in TYPER_ALLOWED for module, _ in _imports(path)
           if module.split(".")[0] in ("typer", "rich")]
    assert bad == []

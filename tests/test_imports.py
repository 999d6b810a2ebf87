"""The import graph of src/delving is one way: no module imports, directly or through others, a module that
imports it back (lazy imports inside functions count too). The data room's layers and the bottom modules are
held by import-linter's contracts in pyproject.toml (`make lint` runs lint-imports); the rooms contract, top to
bottom, is checked here too, with every module in a room."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

SRC = Path(__file__).resolve().parents[1] / "src"


def module_graph() -> dict[str, set[str]]:
    """module -> the delving modules it imports (a package import counts as its __init__)."""
    modules = {
        ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__"): path
        for path in (SRC / "delving").rglob("*.py")
    }
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_circle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_graph_of_delving_has_no_circle() -> None:
    graph = module_graph()
    assert len(graph) > 60 and "delving.data.loaders" in graph["delving.engine.trainer"]
    assert cycles(graph) == []


ROOM_ORDER = ["cli", "config", "plan", "report", "engine", "evaluation", "data", "checkpoint", "models"]


def room_layers() -> list[list[str]]:
    """The rooms contract's layers in pyproject.toml, top first, each a list of modules."""
    config = tomllib.loads((SRC.parent / "pyproject.toml").read_text(encoding="utf-8"))
    (rooms,) = [c for c in config["tool"]["importlinter"]["contracts"] if c["name"].startswith("rooms:")]
    return [[m.strip() for m in re.split(r"[|:]", layer)] for layer in rooms["layers"]]


def test_every_import_runs_down_the_rooms() -> None:
    """cli > config > plan | report > engine > evaluation > data > checkpoint > models > the neutral modules, with
    no exception (lazy imports included): what two rooms share lives below both."""
    layers = room_layers()
    assert [m.removeprefix("delving.") for layer in layers[1:9] for m in layer] == ROOM_ORDER
    level = {module: rank for rank, layer in enumerate(layers) for module in layer}

    def level_of(name: str) -> int | None:
        while name and name not in level:
            name = name.rpartition(".")[0]
        return level.get(name)

    graph = module_graph()
    outside = [m for m in graph if m != "delving" and level_of(m) is None]
    assert outside == [], f"modules in no room of pyproject.toml's rooms contract: {outside}"
    upward = [
        f"{m} -> {t}"
        for m, targets in graph.items()
        if m != "delving"
        for t in targets - {"delving"}
        if level_of(t) < level_of(m)
    ]
    assert upward == []

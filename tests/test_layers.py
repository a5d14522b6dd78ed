"""The package's layers: every module imports only from its own layer or below, and no two modules import
each other, directly or through others (imports inside functions count too).

    0  foundations  losses, registry, importance, logprobs, data, config, trl_compat, drift, io, ...
    1  engine       isdaa.train.*: takes its callbacks as given
    2  built on it  isdaa.evaluate.*, isdaa.hub, isdaa.analysis.*, isdaa.plots
    3  wiring       isdaa.api (config -> engine + callbacks), isdaa.lab.*
    4  commands     isdaa.cli.*

The rule is read from the source (ast), so the test also fails, and names the edge, when an upward import
is added (test_an_upward_import_is_caught).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
LAYERS = (
    (4, ("isdaa.cli",)),
    (3, ("isdaa.api", "isdaa.lab")),
    (2, ("isdaa.evaluate", "isdaa.hub", "isdaa.analysis", "isdaa.plots")),
    (1, ("isdaa.train",)),
)


def layer(module: str) -> int:
    for number, prefixes in LAYERS:
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return number
    return 0


def modules(src: Path = SRC) -> dict[str, Path]:
    out = {}
    for path in (src / "isdaa").rglob("*.py"):
        name = ".".join(path.relative_to(src).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def import_graph(found: dict[str, Path], extra: dict[str, str] | None = None) -> dict[str, set[str]]:
    """module -> the isdaa modules it imports anywhere in its source (`from a.b import c` counts as a.b.c
    when that is a module, else a.b). `extra`: module -> source text to use instead of its file."""

    def resolve(name: str) -> str:
        while name and name not in found:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for name, path in found.items():
        tree = ast.parse((extra or {}).get(name) or path.read_text(encoding="utf-8"))
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "isdaa":
                deps |= {resolve(f"{node.module}.{a.name}") for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {resolve(a.name) for a in node.names if a.name.split(".")[0] == "isdaa"}
        graph[name] = deps - {name, "isdaa", ""}
    return graph


def upward(graph) -> list[str]:
    return sorted(f"{m} (layer {layer(m)}) imports {d} (layer {layer(d)})"
                  for m, deps in graph.items() for d in deps if layer(d) > layer(m))


def cycles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_module_imports_a_layer_above_its_own():
    assert upward(import_graph(modules())) == []


def test_no_import_cycles():
    assert cycles(import_graph(modules())) == []


def test_the_engine_does_not_import_what_is_built_on_it():
    graph = import_graph(modules())
    engine = {m: deps for m, deps in graph.items() if layer(m) == 1}
    assert engine and not any(layer(d) > 1 for deps in engine.values() for d in deps)


def test_an_upward_import_is_caught():
    """The checks are live: the engine's loop importing the live evaluator (inside a function, as the old
    train/__init__ did) is reported as an upward edge, and two modules importing each other as a cycle."""
    found = modules()
    loop = found["isdaa.train.loop"].read_text(encoding="utf-8")
    patched = loop + "\n\ndef _x():\n    from isdaa.evaluate.live import LiveEvalCallback  # noqa\n"
    assert upward(import_graph(found, {"isdaa.train.loop": patched})) == [
        "isdaa.train.loop (layer 1) imports isdaa.evaluate.live (layer 2)"]
    io = found["isdaa.io"].read_text(encoding="utf-8") + "\nfrom isdaa import padding  # noqa\n"
    padding = found["isdaa.padding"].read_text(encoding="utf-8") + "\nfrom isdaa import io  # noqa\n"
    assert ["isdaa.io", "isdaa.padding"] in cycles(import_graph(found, {"isdaa.io": io, "isdaa.padding": padding}))


def test_every_module_imports():
    import importlib

    for name in sorted(modules()):
        if not name.endswith("__main__"):  # runs the command line when imported
            importlib.import_module(name)

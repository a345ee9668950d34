"""The tree shows the pipeline: each package imports only from layers below it (or, for the stages,
beside it), no module imports in a circle, and `edgetl/` holds at most a dozen modules of its own."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import edgetl

PACKAGE = Path(edgetl.__file__).parent

# The layers, bottom first. A unit may import from its own layer only among the stages.
LAYERS = (
    {"errors"},
    {"console", "options", "device"},
    {"backbones"},
    {"runfolder"},
    {"data"},
    {"trainer", "exporter", "quantizer", "bench", "bundler", "reporting"},
    {"api", "demo"},
    {"cli"},
    {"__main__", "__init__"},
)
STAGES = LAYERS[5]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(p for p in parts if p != "__init__")


def _imports(path: Path, modules: set[str]) -> set[str]:
    """edgetl modules imported by `path` at run time (TYPE_CHECKING blocks excluded).

    `from pkg import mod` imports the module, not the package's own names."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for node in ast.walk(block)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("edgetl."):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("edgetl.")}
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {
        name: {m for m in _imports(path, set(modules)) if m in modules and m != name}
        for name, path in modules.items()
    }


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _layer(unit: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if unit in layer)


def test_every_unit_has_a_layer():
    units = {_unit(m) for m in _graph()}
    assert units <= set().union(*LAYERS), f"place these in LAYERS: {units - set().union(*LAYERS)}"


def test_no_import_runs_upward():
    upward = []
    for module, targets in _graph().items():
        for target in targets:
            a, b = _unit(module), _unit(target)
            if a == b:
                continue
            if _layer(b) > _layer(a) or (_layer(b) == _layer(a) and a not in STAGES):
                upward.append(f"{module} -> {target}")
    assert not upward, "imports running upward: " + ", ".join(sorted(upward))


def test_no_import_circle():
    graph = _graph()
    state: dict[str, int] = defaultdict(int)  # 0 new, 1 on the path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state[nxt] == 1:
                return [*path[path.index(nxt) :], nxt]
            if state[nxt] == 0 and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if state[node] == 0:
            cycle = visit(node)
            assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_at_most_a_dozen_modules_at_the_top():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 12, top

"""The package's import graph: no circle, imports between its modules at the top of the module
(the CLI alone defers heavy ones on purpose), and the stages after the sweep free of Ray."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lejepa_tune"


def package_imports() -> dict[str, list[tuple[str, bool]]]:
    """``{module: [(imported package module, at top level?)]}`` for every module."""
    graph: dict[str, list[tuple[str, bool]]] = {}
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text())
        top = set(map(id, tree.body))
        edges = []
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names = [node.module] if node.module else [a.name for a in node.names]
                edges += [(name.split(".")[0], id(node) in top) for name in names]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lejepa_tune."):
                edges.append((node.module.split(".")[1], id(node) in top))
        graph[path.stem] = edges
    return graph


def third_party_imports(module: str) -> set[str]:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_no_import_circle():
    graph = {m: {t for t, _ in edges if t != m} for m, edges in package_imports().items()}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join([*stack[stack.index(nxt):], nxt]))
            if nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


# Deferred on purpose: the trial's process imports ``worker`` only to hand ``train_worker`` to Ray
# Train and never trains, so ``worker`` imports the training stack when a worker starts training,
# and both import the modules of streamed data (which import torch) only when the data is
# streamed (test_trial.py checks that the trial's process imports neither torch nor the stack).
DEFERRED = {("worker", "train"), ("worker", "streaming"), ("trial", "data"), ("trial", "streaming")}


def test_package_imports_sit_at_the_top_except_in_the_cli():
    deferred = {m: sorted({t for t, top in edges if not top and (m, t) not in DEFERRED}) for m, edges in package_imports().items() if m != "cli"}
    assert {m: ts for m, ts in deferred.items() if ts} == {}


def test_the_stages_after_the_sweep_never_import_ray():
    for module in ("records", "agreement", "selection", "analysis", "report", "metrics"):
        assert "ray" not in third_party_imports(module), module
    # ...nor the sweep, directly or through another module.
    graph = {m: {t for t, _ in edges} for m, edges in package_imports().items()}
    for module in ("records", "agreement", "selection", "analysis", "report"):
        seen, todo = set(), [module]
        while todo:
            m = todo.pop()
            seen.add(m)
            todo += [t for t in graph.get(m, ()) if t not in seen]
        assert "sweep" not in seen and "tracking" not in seen, module


def test_every_module_has_its_own_test_module():
    tests = Path(__file__).parent
    modules = [p.stem for p in PACKAGE.glob("*.py") if not p.stem.startswith("__")]
    assert [m for m in sorted(modules) if not (tests / f"test_{m}.py").is_file()] == []

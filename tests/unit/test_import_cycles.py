"""No import cycles inside shim/, runtime/ or oci/, lazy (function-level) imports included: a module's place in the
layout says whose concern it is, and a cycle means two modules each own part of the other's."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _modules(package: str) -> dict[str, Path]:
    modules = {}
    for path in (REPO / package).rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    return modules


def _type_checking_imports(tree: ast.AST) -> set[int]:
    """ids of import nodes under `if TYPE_CHECKING:` (annotations only, never executed)."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            skipped.update(id(sub) for sub in ast.walk(node) if isinstance(sub, (ast.Import, ast.ImportFrom)))
    return skipped


def _graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        skipped = _type_checking_imports(tree)
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


@pytest.mark.parametrize("package", ["shim", "runtime", "oci"])
def test_no_import_cycles(package):
    assert _cycles(_graph(_modules(package))) == []


def test_the_check_finds_a_lazy_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _package_graph(graph: dict[str, set[str]], depth: int) -> dict[str, set[str]]:
    """The module graph seen at the level of the package's sub-packages (`shim.service`, `shim.wasm`, ...)."""
    def level(name: str) -> str:
        return ".".join(name.split(".")[:depth])
    collapsed: dict[str, set[str]] = {}
    for name, targets in graph.items():
        collapsed.setdefault(level(name), set()).update(level(t) for t in targets if level(t) != level(name))
    return collapsed


def test_shim_sub_packages_depend_one_way():
    """cli -> daemon -> service -> wasm/runc -> process -> kernel, and never back: each sub-package is one concern,
    and a cycle between two of them means neither can be read (or moved) alone."""
    graph = _package_graph(_graph(_modules("shim")), depth=2)
    assert {"shim.cli", "shim.daemon", "shim.service", "shim.wasm", "shim.runc", "shim.process", "shim.kernel"} <= set(graph)
    assert _cycles(graph) == []
    assert "shim.service" not in graph["shim.wasm"] | graph["shim.runc"] | graph["shim.process"] | graph["shim.kernel"]

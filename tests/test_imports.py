"""The import graph of `common`, `portal` and `transfer` has no cycle, and every import is at
the top of its module (an import hidden in a function is how a cycle hides)."""
from __future__ import annotations

import ast
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("common", "portal", "transfer")


def module_files(root: Path) -> dict[str, Path]:
    files = {}
    for package in PACKAGES:
        for path in (root / package).rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def imports_of(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    return [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]


def import_graph(root: Path) -> tuple[dict[str, set[str]], list[str]]:
    """Each module's imports of our own modules, and where an import is not at the top."""
    files = module_files(root)
    graph, nested = {name: set() for name in files}, []
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in imports_of(tree):
            if node not in tree.body:
                nested.append(f"{name}:{node.lineno}")
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            graph[name] |= {target for target in targets if target in files and target != name}
    return graph, nested


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as the modules along it, or None."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle():
    graph, _ = import_graph(REPO_ROOT)
    assert find_cycle(graph) is None


def test_every_import_is_at_the_top_of_its_module():
    _, nested = import_graph(REPO_ROOT)
    assert nested == []


def test_a_cycle_is_found():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None

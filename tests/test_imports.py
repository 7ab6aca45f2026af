"""The shape of the code: `portal -> common <- transfer`, no import cycles, imports at the top."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("common", "portal", "transfer")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def our_modules() -> dict[str, Path]:
    """Every module of our packages, by dotted name."""
    return {module_name(path): path
            for package in PACKAGES for path in sorted((REPO_ROOT / package).rglob("*.py"))}


def imported_names(node: ast.Import | ast.ImportFrom, here: str, is_package: bool) -> list[str]:
    """The dotted names an import statement may refer to (a module, or a name in one)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        anchor = here.split(".")
        anchor = anchor if is_package else anchor[:-1]
        anchor = anchor[:len(anchor) - node.level + 1]
        base = ".".join([*anchor, base] if base else anchor)
    return [f"{base}.{alias.name}" for alias in node.names]


def resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module of ours that a dotted name is, or lives in (`common.auth.authenticate`)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Which of our modules each of our modules imports (anywhere in its body)."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in imported_names(node, name, is_package):
                    found = resolve(target, modules)
                    if found and found != name:
                        edges.add(found)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph, as the list of modules round it, or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def late_imports(path: Path) -> list[int]:
    """Lines of import statements that are not at the top level of the module."""
    tree = ast.parse(path.read_text(), str(path))
    top = {id(node) for node in tree.body}
    return [node.lineno for node in ast.walk(tree)
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top
            and not _guarded_by_type_checking(tree, node)]


def _guarded_by_type_checking(tree: ast.Module, node: ast.AST) -> bool:
    for statement in tree.body:
        if isinstance(statement, ast.If) and "TYPE_CHECKING" in ast.unparse(statement.test):
            if any(child is node for child in ast.walk(statement)):
                return True
    return False


def test_the_packages_import_no_cycle():
    assert find_cycle(import_graph(our_modules())) is None


def test_common_imports_neither_the_portal_nor_the_transfer_doors():
    graph = import_graph(our_modules())
    for name, targets in graph.items():
        if name.startswith("common"):
            assert not {t for t in targets if t.startswith(("portal", "transfer"))}, name


@pytest.mark.parametrize("name", sorted(our_modules()))
def test_every_import_is_at_the_top_of_its_module(name):
    assert late_imports(our_modules()[name]) == []


def test_the_cycle_finder_finds_a_cycle_put_back(tmp_path):
    # The same machinery over a small tree where a cycle is put back on purpose.
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("from pkg import b\n")
    (tmp_path / "pkg" / "b.py").write_text("import pkg.c\n")
    (tmp_path / "pkg" / "c.py").write_text("def f():\n    from . import a\n")
    modules = {f"pkg.{p.stem}" if p.stem != "__init__" else "pkg": p
               for p in (tmp_path / "pkg").glob("*.py")}
    graph = import_graph(modules)
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]
    assert late_imports(tmp_path / "pkg" / "c.py") == [2]
    (tmp_path / "pkg" / "c.py").write_text("")
    assert find_cycle(import_graph(modules)) is None


def imports_of_test_modules(tests_root: Path) -> list[str]:
    """Where a module under `tests_root` imports a test module (shared helpers live elsewhere)."""
    found = []
    for path in sorted(tests_root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(name.rpartition(".")[2].startswith("test_") for name in names):
                found.append(f"{path.relative_to(tests_root)}:{node.lineno}")
    return found


def test_no_test_module_imports_another():
    assert imports_of_test_modules(REPO_ROOT / "tests") == []


def test_an_import_of_a_test_module_is_found(tmp_path):
    (tmp_path / "common").mkdir()
    (tmp_path / "common" / "test_a.py").write_text("from tests.factories import upload\n")
    (tmp_path / "test_b.py").write_text("import os\nfrom tests.common.test_a import helper\n")
    assert imports_of_test_modules(tmp_path) == ["test_b.py:2"]

"""The package's import graph has no cycles, counting imports inside functions too: every module can be read
and imported on its own, and a new dependency that closes a loop is caught here rather than at a user's
first `import`. Imports under `if TYPE_CHECKING:` are left out: they only name types and never run."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"smec_fast": ROOT / "smec_fast", "smec_fast.kernels": ROOT / "kernels"}


def module_files() -> dict[str, Path]:
    modules = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [p for p in path.relative_to(folder).with_suffix("").parts if p != "__init__"]
            modules[".".join([package, *parts])] = path
    return modules


def imported(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules `module` imports anywhere in its file (a name inside a module counts as the module)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(inner) for node in ast.walk(tree) if _is_type_checking_block(node)
                   for statement in node.body for inner in ast.walk(statement)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def _is_type_checking_block(node: ast.AST) -> bool:
    """`if TYPE_CHECKING:` or `if typing.TYPE_CHECKING:`."""
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_package_imports_without_cycles():
    modules = module_files()
    assert {"smec_fast.trainer", "smec_fast.checkpoint", "smec_fast.data.images", "smec_fast.kernels.cam"} <= set(modules)
    edges = {module: imported(module, path, modules) for module, path in modules.items()}
    assert "smec_fast.checkpoint" in edges["smec_fast.inference"]  # the graph sees real imports
    assert "smec_fast.data.images" in edges["smec_fast.data.align"]
    assert "smec_fast.methods" in edges["smec_fast.config"]  # inside a function
    assert "smec_fast.config" not in edges["smec_fast.methods.base"]  # only under TYPE_CHECKING
    cycle = find_cycle(edges)
    assert cycle is None, " -> ".join(cycle)


def test_imports_under_type_checking_are_left_out(tmp_path):
    path = tmp_path / "a.py"
    path.write_text("from typing import TYPE_CHECKING\nimport b\nif TYPE_CHECKING:\n    import c\n"
                    "def f():\n    import d\n")
    modules = {name: tmp_path / f"{name}.py" for name in "abcd"}
    assert imported("a", path, modules) == {"b", "d"}

"""Arrows go one way: no import circle among the modules under ``services/``, and the trainer
service reaches its worker processes only through their protocol.

Static: every ``import``/``from ... import`` statement of every module is an edge, at any depth
(an import inside a function still makes two modules depend on each other, and a circle of them
is a knot to untie, not a way around one). Imports under ``if TYPE_CHECKING:`` are left out:
they never run. ``from a import b`` is an edge to the module ``a.b`` when there is one, else to
``a``; importing ``a.b.c`` is not counted as importing the package ``a.b`` (our packages'
``__init__`` files import nothing of ours, or only their own submodules).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ROOT / "services"
GENERATED = SERVICES / "common" / "_generated"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_modules(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The modules among ``known`` that the import statements of ``tree`` name. ``from a import
    b`` names the module ``a.b`` when there is one (a submodule), else ``a`` (a name in it)."""
    found: set[str] = set()
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _type_checking_only(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join([*package, base] if base else package)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
        stack.extend(ast.iter_child_nodes(node))
    return {name for name in found if name in known and name != module}


def import_graph() -> dict[str, set[str]]:
    files = [p for p in SERVICES.rglob("*.py") if GENERATED not in p.parents]
    modules = {module_name(p): p for p in files}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        graph[name] = imported_modules(tree, name, path.name == "__init__.py", set(modules))
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as ``[a, b, ..., a]``, or None."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" after
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_circle_and_passes_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_imports_inside_functions_count_and_type_checking_ones_do_not():
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import services.x\n"
        "def f():\n    from services.y import z\n"
    )
    known = {"services.m", "services.x", "services.y", "services.y.z"}
    assert imported_modules(tree, "services.m", False, known) == {"services.y.z"}


def test_a_name_imported_from_a_module_is_an_edge_to_that_module():
    tree = ast.parse("from services.y import f\nfrom . import z\n")
    known = {"services.m", "services.y", "services.z"}
    assert imported_modules(tree, "services.m", False, known) == {"services.y", "services.z"}


def test_no_import_circle_in_services():
    graph = import_graph()
    assert "services.trainer.main" in graph  # the walk found the tree
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def reachable(graph: dict[str, set[str]], roots: set[str]) -> set[str]:
    seen, stack = set(), list(roots)
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(graph[node])
    return seen


TRAINER = "services.trainer"
PROTOCOL = f"{TRAINER}.worker.protocol"


def test_the_trainer_service_reaches_its_workers_only_through_the_protocol():
    graph = import_graph()
    service_side = {
        m
        for m in graph
        if m.startswith(f"{TRAINER}.runners")
        or m
        in {f"{TRAINER}.{name}" for name in ("main", "service", "supervisor", "admission", "queue")}
    }
    reached = reachable(graph, service_side)
    assert PROTOCOL in reached
    worker_side = {
        m
        for m in reached
        if m.startswith((f"{TRAINER}.recipes", f"{TRAINER}.worker.")) and m != PROTOCOL
    }
    assert worker_side == set()


def test_the_worker_never_imports_the_runners_that_launch_it():
    graph = import_graph()
    worker = {m for m in graph if m.startswith(f"{TRAINER}.worker") or ".recipes" in m}
    assert f"{TRAINER}.worker.__main__" in worker
    reached = reachable(graph, worker)
    assert {m for m in reached if m.startswith(f"{TRAINER}.runners")} == set()
    assert PROTOCOL in reached and not (graph[PROTOCOL] & worker)

"""No import cycle between edge-tl's files, nor between its packages.

The graph is read from the source with ``ast`` (nothing is imported): every ``import`` and
``from ... import`` statement counts, at module level or inside a function, absolute or relative.
``from pkg import name`` imports ``pkg``'s ``__init__.py`` and, when ``name`` is a submodule, that
submodule too; so a module that takes a name (or a sibling module) from its own package, whose
``__init__.py`` imports that module back, is a file cycle.

Packages are edge_tl's first-level subpackages and its top-level modules (``edge_tl.runs``,
``edge_tl.targets``...). ``edge_tl/__init__.py`` is left out of both graphs: it is the public
facade, which re-exports every stage lazily and imports none of them when ``edge_tl`` is imported
(the light-import tests in tests/core pin that).
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

import pytest

import edge_tl

ROOT = Path(edge_tl.__file__).resolve().parent
FACADE = "edge_tl"


def _module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules(root: Path) -> dict[str, Path]:
    return {_module_name(root, p): p for p in sorted(root.rglob("*.py"))}


def _imported(module: str, path: Path, known: set[str]) -> set[str]:
    """The edge_tl modules ``module`` (the file at ``path``) imports, anywhere in its body."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # A package's __init__ is its own anchor; a plain module's is its package.
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # Reading a name from a package runs its __init__, even when the name is a submodule.
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name in known and name != module}


def file_graph(root: Path = ROOT) -> dict[str, set[str]]:
    modules = _modules(root)
    known = set(modules)
    return {name: _imported(name, path, known) - {FACADE} for name, path in modules.items() if name != FACADE}


def package_of(module: str) -> str:
    return ".".join(module.split(".")[:2])


def package_graph(files: dict[str, set[str]]) -> dict[str, dict[str, list[str]]]:
    """Package -> imported package -> the file edges ("a -> b") that make that package edge."""
    graph: dict[str, dict[str, list[str]]] = {package_of(m): {} for m in files}
    for source, targets in files.items():
        for target in sorted(targets):
            a, b = package_of(source), package_of(target)
            if a != b:
                graph[a].setdefault(b, []).append(f"{source} -> {target}")
    return graph


def strongly_connected(graph: dict[str, set[str]] | dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """Tarjan's components with more than one member (or a node importing itself), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components)


def shortest_cycle(graph, component: list[str]) -> list[str]:
    """One shortest cycle through the component's first member, as a closed path."""
    start, members = component[0], set(component)
    parent: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for nxt in sorted(graph.get(node, ())):
            if nxt == start:
                path = [node]
                while parent[path[-1]] is not None:
                    path.append(parent[path[-1]])
                return [*reversed(path), start]
            if nxt in members and nxt not in parent:
                parent[nxt] = node
                queue.append(nxt)
    raise AssertionError(f"no cycle through {start} in {component}")


def describe_file_cycles(files: dict[str, set[str]]) -> list[str]:
    return [f"{' -> '.join(shortest_cycle(files, c))}   (all of: {', '.join(c)})" for c in strongly_connected(files)]


def describe_package_cycles(packages: dict[str, dict[str, list[str]]]) -> list[str]:
    lines = []
    for component in strongly_connected(packages):
        cycle = shortest_cycle(packages, component)
        because = "; ".join(packages[a][b][0] for a, b in zip(cycle, cycle[1:]))
        lines.append(f"{' -> '.join(cycle)}   (all of: {', '.join(component)}; because {because})")
    return lines


def test_no_import_cycle_between_files():
    cycles = describe_file_cycles(file_graph())
    assert not cycles, "import cycles between files:\n" + "\n".join(cycles)


def test_no_import_cycle_between_packages():
    cycles = describe_package_cycles(package_graph(file_graph()))
    assert not cycles, "import cycles between packages:\n" + "\n".join(cycles)


# The reader itself, on a small tree written here: each case is a way an import can hide.
def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "edge_tl"
    for name, text in {"__init__.py": "", **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize(
    ("files", "cycle"),
    [
        # absolute, module level
        ({"a.py": "import edge_tl.b\n", "b.py": "from edge_tl.a import x\n"}, ["edge_tl.a", "edge_tl.b", "edge_tl.a"]),
        # inside a function, relative, and `from pkg import submodule`
        (
            {
                "p/__init__.py": "",
                "p/m.py": "def f():\n    from . import n\n",
                "p/n.py": "from edge_tl.p import m\n",
            },
            ["edge_tl.p.m", "edge_tl.p.n", "edge_tl.p.m"],
        ),
        # a module taking a name from its own package's __init__, which imports it back
        (
            {"p/__init__.py": "from edge_tl.p.api import run\n", "p/api.py": "from edge_tl.p import helper\n"},
            ["edge_tl.p", "edge_tl.p.api", "edge_tl.p"],
        ),
        # a sibling module taken through the package, whose __init__ imports the taker
        (
            {
                "p/__init__.py": "from edge_tl.p.api import run\n",
                "p/api.py": "from edge_tl.p import plots\n",
                "p/plots.py": "",
            },
            ["edge_tl.p", "edge_tl.p.api", "edge_tl.p"],
        ),
        # relative import from inside a package's __init__
        (
            {"p/__init__.py": "from .api import run\n", "p/api.py": "from .. import p\nfrom ..p import x\n"},
            ["edge_tl.p", "edge_tl.p.api", "edge_tl.p"],
        ),
    ],
)
def test_reader_finds_each_kind_of_file_cycle(tmp_path, files, cycle):
    graph = file_graph(_tree(tmp_path, files))
    assert [shortest_cycle(graph, c) for c in strongly_connected(graph)] == [cycle]


def test_reader_finds_package_cycles_and_ignores_the_facade(tmp_path):
    root = _tree(
        tmp_path,
        {
            "__init__.py": "from edge_tl.p.a import x\nfrom edge_tl.q import y\n",
            "p/__init__.py": "",
            "p/a.py": "import edge_tl.q.b\nfrom edge_tl import __version__\n",
            "q/__init__.py": "",
            "q/b.py": "",
            "q/c.py": "def f():\n    from edge_tl.p import a\n",
            "top.py": "from edge_tl.p import a\n",
        },
    )
    files = file_graph(root)
    assert strongly_connected(files) == []
    packages = package_graph(files)
    assert strongly_connected(packages) == [["edge_tl.p", "edge_tl.q"]]
    assert describe_package_cycles(packages) == [
        "edge_tl.p -> edge_tl.q -> edge_tl.p   (all of: edge_tl.p, edge_tl.q; "
        "because edge_tl.p.a -> edge_tl.q.b; edge_tl.q.c -> edge_tl.p)"
    ]
    assert packages["edge_tl.top"] == {"edge_tl.p": ["edge_tl.top -> edge_tl.p", "edge_tl.top -> edge_tl.p.a"]}

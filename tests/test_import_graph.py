"""The import graph of the source tree, read with ``ast`` (nothing is imported): the layers of
docs/architecture.md hold, streams -> online_gim (the core) -> services, with no arrow upwards and
no cycle between modules. Modules are named as they are imported: the folders ``streams/`` and
``services/`` are the packages ``online_gim.streams`` and ``online_gim.services``.

Every ``import`` statement counts, those inside functions and under ``TYPE_CHECKING`` too: a
deferred import is still an arrow.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LAYERS = {"streams": "online_gim.streams", "online_gim": "online_gim", "services": "online_gim.services"}
"""The layers, lowest first: top-level folder -> its package. A module may import its own layer and
the layers below."""


def layer(module: str) -> int:
    """The rank of the layer of a dotted module name (the layer of its longest package prefix)."""
    packages = list(LAYERS.values())
    owner = max((p for p in packages if module == p or module.startswith(f"{p}.")), key=len)
    return packages.index(owner)


def modules(root: Path) -> dict[str, tuple[Path, bool]]:
    """Every module of the layers under ``root``: dotted name -> (file, whether it is a package's ``__init__``)."""
    found = {}
    for folder, package in LAYERS.items():
        for path in (root / folder).rglob("*.py"):
            parts = (package, *path.relative_to(root / folder).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def imported_names(tree: ast.Module, package: str) -> set[str]:
    """The dotted names an ``import`` or ``from ... import`` in ``tree`` may bind, relative ones resolved
    against ``package`` (``from a import b`` gives ``a`` and ``a.b``: ``b`` may be a module)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the modules of the tree it imports (a name is resolved to its longest module prefix)."""
    found = modules(root)
    graph = {}
    for name, (path, is_package) in found.items():
        package = name if is_package else name.rpartition(".")[0]
        targets = set()
        for target in imported_names(ast.parse(path.read_text()), package):
            while target and target not in found:
                target = target.rpartition(".")[0]
            if target and target != name:
                targets.add(target)
        graph[name] = targets
    return graph


def upward_arrows(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """The imports from a layer to a layer above it."""
    return sorted((a, b) for a, targets in graph.items() for b in targets if layer(b) > layer(a))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph[successor]))))
                    break
                if successor in on_stack:
                    low[node] = min(low[node], index[successor])
            else:
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


def test_no_arrow_from_a_layer_to_a_layer_above_it():
    assert upward_arrows(import_graph(ROOT)) == []


def test_no_import_cycle():
    assert cycles(import_graph(ROOT)) == []


def test_imports_name_the_packages_not_the_folders():
    """``import streams`` works only from the repository root (its folder on ``sys.path``), never installed."""
    folders = {folder for folder, package in LAYERS.items() if folder != package}
    found = []
    for name, (path, is_package) in modules(ROOT).items():
        package = name if is_package else name.rpartition(".")[0]
        found += [(name, imported) for imported in imported_names(ast.parse(path.read_text()), package)
                  if imported.split(".")[0] in folders]
    assert found == []


def test_the_checks_find_an_upward_arrow_and_a_cycle(tmp_path):
    files = {
        "streams/__init__.py": "",
        "streams/a.py": "from . import b\n",
        "streams/b.py": "def f():\n    from online_gim.streams.a import x\n",
        "online_gim/__init__.py": "",
        "online_gim/core.py": ("import online_gim.streams.a\nfrom typing import TYPE_CHECKING\n"
                               "if TYPE_CHECKING:\n    from online_gim.services.api import y\n"),
        "services/__init__.py": "",
        "services/api.py": "from online_gim import core\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph(tmp_path)
    assert graph["online_gim.core"] == {"online_gim.streams.a", "online_gim.services.api"}
    assert graph["online_gim.services.api"] == {"online_gim", "online_gim.core"}
    assert upward_arrows(graph) == [("online_gim.core", "online_gim.services.api")]
    assert sorted(cycles(graph)) == [["online_gim.core", "online_gim.services.api"],
                                     ["online_gim.streams.a", "online_gim.streams.b"]]

"""What the code of the three distributions imports, read from the source with ``ast``.

Every import counts: at module level, inside functions, and under ``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator, Mapping, Set
from dataclasses import dataclass
from pathlib import Path

from support.paths import PACKAGES

DISTRIBUTIONS = ("dispatcher-schema", "dispatcher-publisher", "dispatcher-server")


@dataclass(frozen=True)
class Module:
    """One source file of a distribution."""

    name: str
    """Its dotted name, e.g. ``dispatcher.server.pool``."""
    path: Path
    distribution: str
    is_package: bool

    def imports(self) -> Iterator[tuple[str, int]]:
        """Yield each imported dotted name and its line: ``a.b`` for ``from a import b``."""
        tree = ast.parse(self.path.read_text(encoding="utf-8"), str(self.path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield alias.name, node.lineno
            elif isinstance(node, ast.ImportFrom):
                base = self._absolute(node)
                for alias in node.names:
                    yield (base if alias.name == "*" else f"{base}.{alias.name}"), node.lineno

    def _absolute(self, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        parts = self.name.split(".")
        keep = len(parts) - node.level + (1 if self.is_package else 0)
        base = ".".join(parts[:keep])
        return f"{base}.{node.module}" if node.module else base


def modules() -> dict[str, Module]:
    """Every module of the three distributions, by dotted name."""
    found: dict[str, Module] = {}
    for distribution in DISTRIBUTIONS:
        source = PACKAGES / distribution / "src"
        for path in sorted(source.rglob("*.py")):
            parts = list(path.relative_to(source).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            name = ".".join(parts)
            found[name] = Module(name, path, distribution, is_package)
    return found


def module_graph(known: Mapping[str, Module]) -> dict[str, dict[str, int]]:
    """Edges between the modules of *known*: importer -> {imported: first line}.

    An imported name leads to the longest module of *known* it starts with: ``from a import
    b`` to ``a.b`` when that is a module, else to ``a``. The parent packages Python runs
    first (``a`` for ``import a.b``) are not counted as edges.
    """
    graph: dict[str, dict[str, int]] = {name: {} for name in known}
    for name, module in known.items():
        for imported, line in module.imports():
            target = imported
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                graph[name].setdefault(target, line)
    return graph


def cycles(
    graph: Mapping[str, Mapping[str, int]], within: Set[str] | None = None
) -> list[list[str]]:
    """One cycle (as a path that returns to its start) per strongly connected group.

    Only modules in *within* (all when ``None``) are considered.
    """
    nodes = [n for n in sorted(graph) if within is None or n in within]
    allowed = set(nodes)
    edges = {n: sorted(t for t in graph[n] if t in allowed) for n in nodes}
    groups = _strongly_connected(nodes, edges)
    return [_cycle_in(group, edges) for group in groups if len(group) > 1]


def _strongly_connected(nodes: list[str], edges: Mapping[str, list[str]]) -> list[set[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan; the graphs here are small enough to recurse
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            groups.append(group)

    for node in nodes:
        if node not in index:
            visit(node)
    return groups


def _cycle_in(group: set[str], edges: Mapping[str, list[str]]) -> list[str]:
    """A shortest cycle through the group's first module (breadth-first)."""
    start = min(group)
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in edges[node]:
                if target == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [*reversed(path), start]
                if target in group and target not in came_from:
                    came_from[target] = node
                    following.append(target)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # cannot happen in a group of two or more


def describe(cycle: list[str], graph: Mapping[str, Mapping[str, int]]) -> str:
    """A cycle as ``a (line 3) -> b (line 9) -> a``: each import and where it is."""
    steps = [f"{a} (line {graph[a][b]})" for a, b in itertools.pairwise(cycle)]
    return " -> ".join([*steps, cycle[-1]])

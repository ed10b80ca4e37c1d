"""The modules of the three distributions import each other without cycles, in layers.

Read from the source, so that imports inside functions and under ``if TYPE_CHECKING:``
count as much as the others: a cycle of type-only imports is still a tangle.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from support.imports import DISTRIBUTIONS, Module, cycles, describe, module_graph, modules

KNOWN = modules()
GRAPH = module_graph(KNOWN)

PUBLISHER_SIDE = (
    "dispatcher.schema",
    "dispatcher.publish",
    "dispatcher.config",
    "dispatcher.control",
)


def _in(distribution: str) -> set[str]:
    return {name for name, module in KNOWN.items() if module.distribution == distribution}


def _reachable(starts: list[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(starts)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(GRAPH[name])
    return seen


def test_every_distribution_has_modules() -> None:
    for distribution in DISTRIBUTIONS:
        assert len(_in(distribution)) > 3, distribution
    assert "dispatcher.server.service" in KNOWN
    assert "dispatcher.schema.wire" in KNOWN


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_no_import_cycle(distribution: str) -> None:
    found = [describe(cycle, GRAPH) for cycle in cycles(GRAPH, within=_in(distribution))]
    assert found == [], "import cycles:\n" + "\n".join(found)


def test_no_import_cycle_across_distributions() -> None:
    found = [describe(cycle, GRAPH) for cycle in cycles(GRAPH)]
    assert found == [], "import cycles:\n" + "\n".join(found)


def test_schema_imports_neither_the_publisher_nor_the_server() -> None:
    above = _in("dispatcher-publisher") | _in("dispatcher-server")
    assert _reachable(sorted(_in("dispatcher-schema"))) & above == set()


def test_publisher_never_imports_the_server_even_lazily() -> None:
    starts = [name for name in KNOWN if name.startswith(PUBLISHER_SIDE)]
    reached = _reachable(starts)
    assert {name for name in reached if name.startswith("dispatcher.server")} == set()


def test_publisher_side_never_imports_anyio_even_lazily() -> None:
    users = [
        f"{name} (line {line})"
        for name, module in KNOWN.items()
        if name.startswith(PUBLISHER_SIDE)
        for imported, line in module.imports()
        if imported.split(".")[0] == "anyio"
    ]
    assert users == []


def test_cycle_finder_finds_a_cycle_and_names_each_import() -> None:
    graph = {"a": {"b": 3}, "b": {"c": 5}, "c": {"a": 7, "d": 1}, "d": {}}
    [cycle] = cycles(graph)
    assert cycle == ["a", "b", "c", "a"]
    assert describe(cycle, graph) == "a (line 3) -> b (line 5) -> c (line 7) -> a"
    assert cycles(graph, within={"a", "b", "d"}) == []


def test_type_checking_and_function_imports_count(tmp_path: Path) -> None:
    source = tmp_path / "probe.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from dispatcher.server.service import Service\n"
        "def later() -> None:\n"
        "    import dispatcher.server.pool\n"
        "from . import sibling\n"
    )
    probe = Module("dispatcher.server.probe", source, "dispatcher-server", is_package=False)
    assert set(probe.imports()) == {
        ("typing.TYPE_CHECKING", 1),
        ("dispatcher.server.service.Service", 3),
        ("dispatcher.server.pool", 5),
        ("dispatcher.server.sibling", 6),
    }

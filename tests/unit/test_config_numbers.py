"""No NaN nor infinity anywhere in a config: the schema's bounds cannot refuse them; no cycle,
too deep a nesting or too many values either (a dict built in Python)."""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.config import ConfigError, load_settings
from dispatcher.config.loading import settings_from_file_data
from dispatcher.schema import Problem
from support.config_schema import SAMPLE_KEY, Path, document_with, schema_nodes, sorted_paths
from support.examples import examples

NON_FINITE = [math.nan, math.inf, -math.inf]


def numeric_paths() -> list[Path]:
    """The path of every setting the config schema takes a number for."""
    found = set()
    for path, node in schema_nodes():
        kinds = node.get("type")
        kinds = kinds if isinstance(kinds, list) else [kinds]
        if path and ("number" in kinds or "integer" in kinds):
            found.add(path)
    return sorted_paths(found)


def test_the_schema_has_numeric_settings_to_check() -> None:
    paths = numeric_paths()
    assert ("producers", "scheduled", SAMPLE_KEY, "schedule") in paths
    assert ("brokers", "pg_queue", "poll_interval") in paths
    assert len(paths) >= 30


@pytest.mark.parametrize("path", numeric_paths(), ids=lambda path: ".".join(map(str, path)))
@pytest.mark.parametrize("value", NON_FINITE, ids=str)
def test_no_numeric_setting_takes_a_nan_or_an_infinity(
    path: tuple[str | int, ...], value: float
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(document_with(path, value))
    location = Problem(path, "").location
    [problem] = caught.value.problems
    assert problem.startswith(f"{location}: ")
    assert "a finite number is expected" in problem


@pytest.mark.parametrize(
    "value", [Decimal("NaN"), Decimal("sNaN"), Decimal("5"), Fraction(1, 2)], ids=repr
)
def test_a_number_of_another_type_is_refused_naming_its_setting(value: object) -> None:
    path = ("producers", "scheduled", "m.t", "schedule")
    with pytest.raises(ConfigError) as caught:
        load_settings(document_with(path, value))
    [problem] = caught.value.problems
    kind = type(value).__name__
    assert problem == (
        f"{Problem(path, '').location}: a {kind}, not a number of JSON: give an int or a float"
    )


@settings(max_examples=examples(100), deadline=None)
@given(
    path=st.lists(st.one_of(st.text(min_size=1, max_size=8), st.just(0)), max_size=5),
    value=st.sampled_from(NON_FINITE),
)
def test_a_nan_or_an_infinity_anywhere_is_refused_where_it_is(
    path: list[str | int], value: float
) -> None:
    where = ("producers", *path)
    with pytest.raises(ConfigError) as caught:
        load_settings(document_with(where, value))
    assert caught.value.problems[0].startswith(f"{Problem(where, '').location}: ")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (".nan", "NaN (not a number)"),
        (".inf", "inf (infinite)"),
        ("-.Inf", "-inf (infinite)"),
    ],
)
def test_yaml_nan_and_infinities_are_refused_with_their_setting(text: str, reason: str) -> None:
    config = f"version: 1\nproducers:\n  scheduled:\n    app.tasks.report: {{schedule: {text}}}\n"
    with pytest.raises(ConfigError) as caught:
        settings_from_file_data("dispatcher.yml", config.encode())
    assert caught.value.problems == [
        f"producers.scheduled['app.tasks.report'].schedule: {reason}: a finite number is expected"
    ]


def cyclic_configs() -> dict[str, tuple[dict[str, Any], str]]:
    """Dicts that contain themselves (as a Python or Django settings module can build), and
    where the cycle closes."""
    made: dict[str, tuple[dict[str, Any], str]] = {}
    base = {"version": 1, "brokers": {"pg_notify": {"conninfo": "dbname=x", "channels": ["c"]}}}
    whole = dict(base)
    whole["brokers"] = {**base["brokers"], "self": whole}
    made["the whole config"] = (whole, "brokers.self")
    section = dict(base, producers={"scheduled": {}})
    section["producers"]["scheduled"]["app.tasks.report"] = section["producers"]
    made["a section"] = (section, "producers.scheduled['app.tasks.report']")
    listed: list[Any] = ["c"]
    listed.append(listed)
    made["a list"] = (
        dict(base, brokers={"pg_notify": {"channels": listed}}),
        "brokers.pg_notify.channels[1]",
    )
    unversioned = {"pool": {"max_workers": 4}}  # the older layout, translated otherwise
    unversioned["pool"]["again"] = unversioned
    made["an unversioned config"] = (unversioned, "pool.again")
    dispatcherd = {"version": 2, "brokers": {"pg_notify": {}}}
    dispatcherd["brokers"]["pg_notify"]["config"] = dispatcherd["brokers"]
    made["a dispatcherd config"] = (dispatcherd, "brokers.pg_notify.config")
    return made


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", cyclic_configs())
def test_a_config_that_contains_itself_is_refused_where_the_cycle_closes(name: str) -> None:
    config, where = cyclic_configs()[name]
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert caught.value.problems == [
        f"{where}: contains itself (a cycle): a config is a tree of values"
    ]


def test_a_shared_value_is_not_a_cycle() -> None:
    channels = ["c"]
    settings = load_settings(
        {
            "version": 1,
            "brokers": {
                "pg_notify": {"conninfo": "dbname=x", "channels": channels},
                "pg_queue": {"queues": ["q"]},
            },
            "publish": {"default_broker": "pg_notify"},
            "tasks": {"modules": channels},  # the same list twice: a tree still
        }
    )
    assert settings.data["tasks"]["modules"] == ["c"]


@pytest.mark.timeout(30)
def test_too_deep_or_too_large_a_config_is_refused_at_once() -> None:
    deep: dict[str, Any] = {}
    inner = deep
    for _ in range(5000):
        inner["a"] = {}
        inner = inner["a"]
    with pytest.raises(ConfigError) as caught:
        load_settings({"version": 1, "producers": deep})
    assert caught.value.problems == [f"producers{'.a' * 63}: nested more than 64 levels deep"]
    shared: list[Any] = [0]
    for _ in range(40):  # 2^40 values once expanded, from 41 lists
        shared = [shared, shared]
    with pytest.raises(ConfigError) as caught:
        load_settings({"version": 1, "producers": shared})
    assert caught.value.problems == ["(root): more than 1000000 values"]


FLOORS = {
    ("producers", "scheduled", SAMPLE_KEY, "schedule"): 0.01,
    ("brokers", "pg_queue", "poll_interval"): 0.01,
    ("brokers", "pg_notify", "self_check_interval"): 0.01,
    ("brokers", "pg_notify", "self_check_timeout"): 0.01,
    ("worker", "idle_timeout"): 0.01,
    ("service", "pool", "max_worker_lifetime"): 0.1,
    ("brokers", "pg_queue", "lease"): 1,
}
"""The durations that set how often something repeats, and the shortest each takes: a
``schedule`` of 1e-9 seconds, a ``poll_interval`` of 1e-9 would keep a core busy."""


def complete_with(path: tuple[str | int, ...], value: float) -> dict[str, Any]:
    """A config that is valid but for *value* at *path*."""
    document: dict[str, Any] = {
        "version": 1,
        "brokers": {
            "pg_notify": {"conninfo": "dbname=x", "channels": ["c"]},
            "pg_queue": {"queues": ["q"]},
        },
    }
    parent: Any = document
    for part in path[:-1]:
        parent = parent.setdefault(part, {})
    parent[path[-1]] = value
    return document


@pytest.mark.parametrize("path", FLOORS, ids=lambda path: ".".join(map(str, path)))
@pytest.mark.parametrize("scale", [1e-9, 0.5])
def test_a_period_shorter_than_its_floor_is_refused_naming_it(
    path: tuple[str | int, ...], scale: float
) -> None:
    floor = FLOORS[path]
    with pytest.raises(ConfigError) as caught:
        load_settings(complete_with(path, floor * scale))
    assert caught.value.problems == [f"{Problem(path, '').location}: must be at least {floor}"]
    load_settings(complete_with(path, floor))  # the floor itself is taken

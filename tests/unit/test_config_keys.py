"""A key that YAML reads as another type than a string is refused naming it, in every layout.

``~:``, ``1.5:``, ``2024-01-01:``, ``true:``, ``!!binary ...:`` and ``? [a]`` are keys YAML
reads as null, a number, a date, a boolean, bytes or a list. A config is a JSON document,
whose keys are strings: each is refused where it is, with the config's other problems, as
a ConfigError (status 2 for the commands), never a traceback.
"""

from __future__ import annotations

import datetime
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.config import ConfigError, load_settings
from dispatcher.config.loading import settings_from_file_data
from dispatcher.schema import Problem
from dispatcher.schema.errors import format_path
from support.examples import examples

QUOTE_IT = " (YAML reads an unquoted ~, true, number or date as one: quote the key)"

KEYS = {
    "~": ("[null]", "null" + QUOTE_IT),
    "null": ("[null]", "null" + QUOTE_IT),
    "1.5": ("[1.5]", "a number" + QUOTE_IT),
    "7": ("[7]", "an integer" + QUOTE_IT),
    "true": ("[true]", "a boolean" + QUOTE_IT),
    "2024-01-01": ("[2024-01-01]", "a date" + QUOTE_IT),
    "2024-01-01 10:00:00": ("[2024-01-01T10:00:00]", "a date and time" + QUOTE_IT),
    "!!binary aGk=": ("[b'hi']", "binary data"),
    "? [a]\n  ": ("[('a',)]", "a list"),
}
"""A key as written under ``service:``; where the message puts it, and what it says it is."""

LAYOUTS = {
    "version 1": "version: 1\nservice:\n  {key}: 1\n",
    "dispatcherd's (version 2)": (
        "version: 2\nservice:\n  pool_kwargs: {{max_workers: 4}}\n  {key}: 1\n"
        "brokers:\n  pg_notify:\n    config: {{conninfo: 'dbname=x'}}\n    channels: [a]\n"
    ),
    "dispatcherd's, unversioned": (
        "service:\n  pool_kwargs: {{max_workers: 4}}\n  {key}: 1\n"
        "brokers:\n  pg_notify:\n    config: {{conninfo: 'dbname=x'}}\n    channels: [a]\n"
    ),
    "the unversioned": "pool:\n  max_workers: 4\nservice:\n  {key}: 1\n",
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("key", KEYS)
def test_a_key_that_is_no_string_is_refused_naming_it(layout: str, key: str) -> None:
    text = LAYOUTS[layout].format(key=key)
    where, kind = KEYS[key]
    with pytest.raises(ConfigError) as caught:
        settings_from_file_data("dispatcher.yml", text.encode())
    assert caught.value.problems == [f"service{where}: a key must be a string, not {kind}"]


def test_every_such_key_is_named_and_deeper_ones_too() -> None:
    text = (
        "version: 1\nservice:\n  ~: 1\n  1.5: 2\n  node_id: a\nproducers:\n  scheduled:\n"
        "    app.tasks.t: {schedule: 5, args: [{2024-01-01: x}]}\n"
    )
    with pytest.raises(ConfigError) as caught:
        settings_from_file_data("dispatcher.yml", text.encode())
    assert caught.value.problems == [
        "producers.scheduled['app.tasks.t'].args[0][2024-01-01]: a key must be a string, "
        "not a date" + QUOTE_IT,
        f"service[1.5]: a key must be a string, not a number{QUOTE_IT}",
        f"service[null]: a key must be a string, not null{QUOTE_IT}",
    ]


def test_a_dict_config_with_such_keys_is_refused_too() -> None:
    config: dict[Any, Any] = {"version": 1, "service": {None: 1, 3: 2}, "tasks": {True: []}}
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert [p.split(":")[0] for p in caught.value.problems] == [
        "service[3]",
        "service[null]",
        "tasks[true]",
    ]


COMMANDS = {
    "dispatcherctl": [sys.executable, "-m", "dispatcher.server.ctl", "alive", "--config"],
    "dispatcher-standalone": [sys.executable, "-m", "dispatcher.server", "--config"],
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("key", ["~", "2024-01-01"])
def test_the_commands_refuse_such_a_config_with_status_2(
    tmp_path: Path, command: str, key: str
) -> None:
    config = tmp_path / "dispatcher.yml"
    config.write_text(LAYOUTS["dispatcherd's (version 2)"].format(key=key))
    done = subprocess.run(
        [*COMMANDS[command], str(config)], capture_output=True, text=True, timeout=60
    )
    where, kind = KEYS[key]
    assert (done.returncode, done.stderr) == (
        2,
        f"{command}: {config}: service{where}: a key must be a string, not {kind}\n",
    )


SCALAR_KEYS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.dates(),
    st.datetimes(),
    st.binary(max_size=5),
    st.text(max_size=5),
    st.tuples(st.integers()),
)


@settings(max_examples=examples(200), deadline=None)
@given(paths=st.lists(st.lists(SCALAR_KEYS, max_size=4), min_size=1, max_size=4))
def test_any_path_is_written_and_problems_sort_whatever_their_keys(
    paths: list[list[Any]],
) -> None:
    problems = [Problem(tuple(path), "reason") for path in paths]
    for problem in sorted(problems, key=lambda p: p.sort_key):
        assert str(problem).endswith(": reason")
    for path in paths:
        assert isinstance(format_path(path), str)
    assert format_path([None, True, datetime.date(2024, 1, 1), 1.5, 2]) == (
        "[null][true][2024-01-01][1.5][2]"
    )

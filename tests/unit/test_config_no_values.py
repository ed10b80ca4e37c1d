"""No config error quotes a value of the config: it may be a secret written in the wrong place.

Each problem names the key and says what was expected and the type of what was found. A
sentinel secret put at every place of the schema, in every shape (a string, a list, a
mapping, a cron expression, a time zone, a name), never shows in the message.
"""

from __future__ import annotations

from typing import Any

import pytest

from dispatcher.config import ConfigError, load_settings
from dispatcher.config.loading import settings_from_file_data
from dispatcher.schema import load_schema

SECRET = "hunter2-SECRET"
SAMPLE_KEY = "app.tasks.report"


def schema_paths() -> list[tuple[str | int, ...]]:
    """The path of every setting of the config schema (each key, each list's first item)."""
    schema = load_schema("config")

    def resolve(ref: str) -> Any:
        node: Any = schema
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
        return node

    found: set[tuple[str | int, ...]] = set()
    pending: list[tuple[tuple[str | int, ...], Any, frozenset[str]]] = [((), schema, frozenset())]
    while pending:
        path, node, refs = pending.pop()
        if not isinstance(node, dict):
            continue
        if path:
            found.add(path)
        ref = node.get("$ref", "")
        if ref.startswith("#/") and ref not in refs:
            pending.append((path, resolve(ref), refs | {ref}))
        for key, child in node.get("properties", {}).items():
            pending.append(((*path, key), child, refs))
        for child in node.get("patternProperties", {}).values():
            pending.append(((*path, SAMPLE_KEY), child, refs))
        if isinstance(node.get("additionalProperties"), dict):
            pending.append(((*path, SAMPLE_KEY), node["additionalProperties"], refs))
        if isinstance(node.get("items"), dict):
            pending.append(((*path, 0), node["items"], refs))
    return sorted(found, key=lambda path: [str(part) for part in path])


def document_with(path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    """A version 1 config with *value* at *path* (lists of one item where an index is)."""
    root: dict[str, Any] = {"version": 1}
    parent: Any = root
    for part, following in zip(path, [*path[1:], None], strict=True):
        child: Any = value if following is None else ([] if isinstance(following, int) else {})
        if isinstance(parent, list):
            parent.append(child)
        else:
            parent[part] = child
        parent = child
    return root


SHAPES = {
    "a string": SECRET,
    "a string with spaces": f"{SECRET} a b c d",
    "a list": [SECRET],
    "a mapping": {"k": SECRET},
    "a long string": SECRET * 40,
    "an empty string and the secret": ["", SECRET, SECRET],
}


def test_the_schema_has_settings_to_check() -> None:
    paths = schema_paths()
    assert ("brokers", "pg_notify", "conninfo") in paths
    assert ("producers", "scheduled", SAMPLE_KEY, "timezone") in paths
    assert len(paths) >= 80


@pytest.mark.parametrize("path", schema_paths(), ids=lambda path: ".".join(map(str, path)))
@pytest.mark.parametrize("shape", SHAPES)
def test_no_problem_quotes_a_value_wherever_it_is(path: tuple[str | int, ...], shape: str) -> None:
    try:
        load_settings(document_with(path, SHAPES[shape]))
    except ConfigError as exc:
        said = str(exc)
    else:
        said = ""
    assert "hunter2" not in said


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (
            "brokers: {pg_notify: {conninfo: ['host=db password=hunter2'], channels: [a]}}",
            "brokers.pg_notify.conninfo: expected string, got array",
        ),
        (
            "brokers: {pg_notify: {conninfo: {password: hunter2}, channels: [a]}}",
            "brokers.pg_notify.conninfo: expected string, got object",
        ),
        (
            "brokers: {pg_notify: {conninfo: 'sslmode=hunter2', channels: [a]}}",
            "brokers.pg_notify.conninfo: sslmode: expected one of disable, allow, prefer, "
            "require, verify-ca, verify-full",
        ),
        (
            "brokers: {pg_notify: {conninfo: 'dbname=x', channels: [a]}}\n"
            "publish: {default_broker: hunter2}",
            "publish.default_broker: names a broker not configured under 'brokers' "
            "(configured: pg_notify)",
        ),
        (
            "brokers: {pg_notify: {conninfo: 'dbname=x', channels: [a]}, pg_queue: {queues: [a]}}",
            "brokers.pg_queue.queues[0]: also a pg_notify channel (brokers.pg_notify.channels"
            "[0]); a queue is durable or not, list it in one only",
        ),
        (
            "producers: {scheduled: {app.t: {schedule: 'hunter2 * * * *'}}}",
            "producers.scheduled['app.t'].schedule: not a cron expression: not acceptable",
        ),
        (
            "producers: {scheduled: {app.t: {schedule: '0 hunter2 * * mon#9'}}}",
            "producers.scheduled['app.t'].schedule: not a cron expression: not acceptable",
        ),
        (
            "producers: {scheduled: {app.t: {schedule: '0 0 * * *', timezone: hunter2}}}",
            "producers.scheduled['app.t'].timezone: unknown time zone (expected an IANA name "
            "such as 'Europe/Paris')",
        ),
        (
            "service: {pool: {min_workers: 3, max_workers: 2}}",
            "service.pool.min_workers: must be at most max_workers",
        ),
        (
            "security: {keys: [{id: hunter2, secret: x}, {id: hunter2, secret: y}]}",
            "security.keys[1].id: is also the id of keys[0]",
        ),
        (
            "version: 2\nservice: {process_manager_cls: hunter2}",
            "service.process_manager_cls: not a dispatcherd process manager (expected one of "
            "ForkServerManager, ProcessManager, SpawnServerManager)",
        ),
        (
            "version: 2\nproducers: {ScheduledProducer: {task_schedule: {app.t: "
            "{schedule: hunter2}}}}",
            "producers.ScheduledProducer.task_schedule['app.t'].schedule: expected a number of "
            "seconds, got a string that is not a number",
        ),
    ],
)
def test_each_kind_of_problem_names_the_key_and_what_was_expected(text: str, said: str) -> None:
    if not text.startswith("version"):
        text = "version: 1\n" + text
    with pytest.raises(ConfigError) as caught:
        settings_from_file_data("dispatcher.yml", text.encode())
    assert caught.value.problems == [said]

"""No config error quotes a value of the config: it may be a secret written in the wrong place.

Each problem names the key and says what was expected and the type of what was found. A
sentinel secret put at every place of the schema, in every shape (a string, a list, a
mapping, a cron expression, a time zone, a name), never shows in the message.
"""

from __future__ import annotations

import pytest

from dispatcher.config import ConfigError, load_settings
from dispatcher.config.loading import settings_from_file_data
from support.config_schema import SAMPLE_KEY, Path, document_with, schema_nodes, sorted_paths

SECRET = "hunter2-SECRET"


def schema_paths() -> list[Path]:
    """The path of every setting of the config schema (each key, each list's first item)."""
    return sorted_paths({path for path, _ in schema_nodes() if path})


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
            "producers.scheduled['app.t'].schedule: not a cron expression: minute: not acceptable",
        ),
        (
            "producers: {scheduled: {app.t: {schedule: '0 hunter2 * * mon#9'}}}",
            "producers.scheduled['app.t'].schedule: not a cron expression: hour: not acceptable",
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

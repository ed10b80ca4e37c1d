"""The ``brokers.pg_queue`` section: defaults, the conninfo it borrows, and its errors."""

from __future__ import annotations

from typing import Any

import pytest

from dispatcher.config import ConfigError, PgQueueBroker, load_settings

PG = {"conninfo": "dbname=app"}


def test_defaults_and_conninfo_of_pg_notify() -> None:
    settings = load_settings(
        {
            "version": 1,
            "brokers": {"pg_notify": {**PG, "channels": ["a"]}, "pg_queue": {"queues": ["orders"]}},
        }
    )
    assert settings.brokers.pg_queue == PgQueueBroker(conninfo="dbname=app", queues=("orders",))
    assert settings.brokers.names == ("pg_notify", "pg_queue")
    assert settings.brokers.allow_control("pg_queue") is None


def test_every_key_as_written() -> None:
    section = {
        "queues": ["orders", "mail"],
        "conninfo": "dbname=queue",
        "schema": "jobs_2",
        "lease": 5,
        "poll_interval": 0.25,
        "max_attempts": 10,
        "retry_backoff": 0,
        "retry_backoff_max": 60,
        "retry_jitter": 0,
        "keep_finished": 0,
        "batch_size": 500,
        "allow_control": ["alive"],
    }
    broker = load_settings({"version": 1, "brokers": {"pg_queue": section}}).brokers.pg_queue
    assert broker == PgQueueBroker(
        conninfo="dbname=queue",
        queues=("orders", "mail"),
        schema="jobs_2",
        lease=5,
        poll_interval=0.25,
        max_attempts=10,
        retry_backoff=0,
        retry_backoff_max=60,
        retry_jitter=0,
        keep_finished=0,
        batch_size=500,
        allow_control=("alive",),
    )


ERRORS: list[tuple[str, dict[str, Any], str]] = [
    ("no queues", {"conninfo": "x"}, "brokers.pg_queue.queues: is required"),
    ("empty queues", {"queues": []}, "brokers.pg_queue.queues: expected at least 1 item"),
    (
        "bad queue name",
        {"queues": ["ok", "a b"]},
        "brokers.pg_queue.queues[1]: not a valid channel name",
    ),
    (
        "duplicate queue",
        {"queues": ["a", "a"]},
        "brokers.pg_queue.queues[1]: repeats item [0] (each may be given once)",
    ),
    (
        "upper-case schema",
        {"queues": ["a"], "schema": "Jobs"},
        "brokers.pg_queue.schema: not a valid PostgreSQL schema name",
    ),
    (
        "a system schema",
        {"queues": ["a"], "schema": "information_schema"},
        "brokers.pg_queue.schema: not a valid PostgreSQL schema name",
    ),
    (
        "a pg_ schema",
        {"queues": ["a"], "schema": "pg_catalog"},
        "brokers.pg_queue.schema: not a valid PostgreSQL schema name",
    ),
    ("lease of zero", {"queues": ["a"], "lease": 0}, "brokers.pg_queue.lease: must be at least 1"),
    (
        "poll_interval of zero",
        {"queues": ["a"], "poll_interval": 0},
        "brokers.pg_queue.poll_interval: must be at least 0.01",
    ),
    (
        "max_attempts over 1000",
        {"queues": ["a"], "max_attempts": 1001},
        "brokers.pg_queue.max_attempts: must be at most 1000",
    ),
    (
        "jitter over 1",
        {"queues": ["a"], "retry_jitter": 1.5},
        "brokers.pg_queue.retry_jitter: must be at most 1",
    ),
    (
        "batch_size of zero",
        {"queues": ["a"], "batch_size": 0},
        "brokers.pg_queue.batch_size: must be at least 1",
    ),
    (
        "unknown key",
        {"queues": ["a"], "leases": 3},
        "brokers.pg_queue.leases: unknown key (did you mean 'lease'?)",
    ),
]


@pytest.mark.parametrize(
    ("section", "expected"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS]
)
def test_schema_errors_name_the_path(section: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"version": 1, "brokers": {"pg_notify": PG, "pg_queue": section}})
    assert f"config: {expected}" in str(caught.value)


def test_conninfo_is_needed_without_pg_notify() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"version": 1, "brokers": {"pg_queue": {"queues": ["orders"]}}})
    assert str(caught.value) == (
        "config: brokers.pg_queue.conninfo: required: set it, or configure brokers.pg_notify, "
        "whose conninfo it defaults to"
    )


def test_a_queue_may_not_be_a_notify_channel_too() -> None:
    brokers = {
        "pg_notify": {**PG, "channels": ["mail", "orders"]},
        "pg_queue": {"queues": ["x", "orders"]},
    }
    with pytest.raises(ConfigError) as caught:
        load_settings({"version": 1, "brokers": brokers})
    assert str(caught.value) == (
        "config: brokers.pg_queue.queues[1]: also a pg_notify channel "
        "(brokers.pg_notify.channels[1]); a queue is durable or not, list it in one only"
    )


def test_pg_queue_can_be_the_default_broker() -> None:
    config = {
        "version": 1,
        "brokers": {"pg_queue": {**PG, "queues": ["a"]}},
        "publish": {"default_broker": "pg_queue"},
    }
    assert load_settings(config).publish.default_broker == "pg_queue"

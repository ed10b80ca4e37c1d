"""Durable jobs whose arguments have keys that are no strings: stored, and deduplicated, as a
service reads them (``1`` as ``"1"``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from dispatcher.config import reset, setup
from dispatcher.publish import close_connections, submit_task
from dispatcher.schema import duplicate_key
from support.durable import own_schema


@pytest.fixture
def schema(pg_dsn: str) -> Iterator[str]:
    """A schema of this test's own, with the queue's tables made by the migrations."""
    with own_schema(pg_dsn) as name:
        yield name


@pytest.fixture
def durable(pg_dsn: str, schema: str) -> Iterator[None]:
    """The durable queue ``orders``."""
    setup(
        {
            "version": 1,
            "brokers": {"pg_queue": {"conninfo": pg_dsn, "queues": ["orders"], "schema": schema}},
        }
    )
    yield
    close_connections()
    reset()


def stored(pg_dsn: str, schema: str) -> list[tuple[Any, str, str]]:
    """Each job's arguments, its dup_key, and the dup_key a service computes from its text."""
    query = sql.SQL("SELECT message, dup_key FROM {}.jobs ORDER BY id").format(
        sql.Identifier(schema)
    )
    with psycopg.connect(pg_dsn) as conn:
        found = conn.execute(query).fetchall()
    return [
        (json.loads(text)["kwargs"], key, duplicate_key(json.loads(text))) for text, key in found
    ]


@pytest.mark.usefixtures("durable")
@pytest.mark.parametrize(
    ("given", "as_read"),
    [
        ({1: "a", "b": 2}, {"1": "a", "b": 2}),  # keys that Python cannot sort together
        ({10: "a", 9: "b"}, {"10": "a", "9": "b"}),  # as numbers, 9 would sort first
        ({"x": [{None: 1, "y": 2}]}, {"x": [{"null": 1, "y": 2}]}),
    ],
)
def test_keys_that_are_no_strings_count_as_a_service_reads_them(
    pg_dsn: str, schema: str, given: dict[Any, Any], as_read: dict[str, Any]
) -> None:
    submit_task("myapp.tasks.work", kwargs=given, queue="orders", on_duplicate="discard")
    submit_task("myapp.tasks.work", kwargs=as_read, queue="orders", on_duplicate="discard")
    [(kwargs, key, computed)] = stored(pg_dsn, schema)  # the second: a duplicate, discarded
    assert kwargs == as_read
    assert key == computed

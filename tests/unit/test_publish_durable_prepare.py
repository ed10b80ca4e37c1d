"""Submissions for durable queues, checked before anything is sent (no database needed)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import pytest

from dispatcher.config import reset, setup
from dispatcher.publish import InvalidSubmission, RegistrationError, prepare_submission, task
from dispatcher.publish.pg_queue import job_rows
from dispatcher.schema import duplicate_identity, duplicate_key
from dispatcher.server import intake_jobs

SECRET = "s" * 32


def config(**pg_queue: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "brokers": {
            "pg_notify": {"conninfo": "dbname=x", "channels": ["fast"]},
            "pg_queue": {"queues": ["orders", "mail"], **pg_queue},
        },
        "security": {"keys": [{"id": "k1", "secret": SECRET}]},
    }


@pytest.fixture(autouse=True)
def _config() -> Iterator[None]:
    setup(config())
    yield
    reset()


def test_a_durable_submission_keeps_its_json_text_whole_and_unsigned() -> None:
    big = "x" * 20_000
    submission = prepare_submission("myapp.tasks.ship", args=[big], queue="orders")
    assert submission.channel == "orders"
    [text] = submission.payloads  # no chunks
    assert json.loads(text) == submission.message  # no signed envelope
    assert submission.max_attempts is None  # the queue's
    notified = prepare_submission("myapp.tasks.ship", args=[1], queue="fast")
    assert "__dispatcher_signed__" in notified.payloads[0]  # NOTIFY is signed
    assert (submission.durable, notified.durable) == (True, False)


def test_max_attempts_from_the_call_or_the_decorator() -> None:
    @task(queue="orders", max_attempts=8, name="tests.durable.retried")
    def retried() -> None: ...

    assert prepare_submission(retried).max_attempts == 8
    assert prepare_submission(retried, max_attempts=1).max_attempts == 1
    assert prepare_submission("any.task", queue="mail", max_attempts=1000).max_attempts == 1000


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (0, "must be between 1 and 1000, got 0"),
        (1001, "must be between 1 and 1000, got 1001"),
        (2.5, "expected an integer, got float 2.5"),
        (True, "expected an integer, got bool True"),
    ],
)
def test_max_attempts_out_of_range_is_refused(value: Any, reason: str) -> None:
    with pytest.raises(InvalidSubmission) as caught:
        prepare_submission("myapp.tasks.ship", queue="orders", max_attempts=value)
    assert str(caught.value) == f"cannot submit myapp.tasks.ship: max_attempts: {reason}"
    with pytest.raises(RegistrationError, match=f"max_attempts: {reason}"):
        task(queue="orders", max_attempts=value, name="tests.durable.bad")(lambda: None)


def test_max_attempts_on_a_notify_channel_is_refused() -> None:
    with pytest.raises(InvalidSubmission) as caught:
        prepare_submission("myapp.tasks.ship", queue="fast", max_attempts=3)
    assert str(caught.value) == (
        "cannot submit myapp.tasks.ship: max_attempts: applies to durable queues only, and "
        "'fast' is not one (durable queues are listed under brokers.pg_queue.queues)"
    )


def test_a_queue_the_durable_default_broker_does_not_list_is_refused() -> None:
    setup({**config(conninfo="dbname=x"), "publish": {"default_broker": "pg_queue"}})
    with pytest.raises(InvalidSubmission) as caught:
        prepare_submission("myapp.tasks.ship", queue="elsewhere")
    assert str(caught.value) == (
        "cannot submit myapp.tasks.ship: queue: 'elsewhere' is not one of the queues of "
        "brokers.pg_queue (mail, orders): no service would claim it"
    )


def test_rows_carry_the_options_and_the_duplicate_key() -> None:
    plain = prepare_submission("a.b", args=[1], queue="orders")
    tracked = prepare_submission(
        "a.b", args=[1], kwargs={"k": "é"}, queue="mail", delay=2.5, on_duplicate="discard"
    )
    parallel = prepare_submission("a.b", queue="orders", on_duplicate="parallel", max_attempts=9)
    uuids, queues, tasks, texts, attempts, delays, modes, keys = job_rows(
        [plain, tracked, parallel], default_max_attempts=3
    )
    assert uuids == [plain.uuid, tracked.uuid, parallel.uuid]
    assert (queues, tasks) == (["orders", "mail", "orders"], ["a.b"] * 3)
    assert texts == [s.payloads[0] for s in (plain, tracked, parallel)]
    assert (attempts, delays) == ([3, 3, 9], [0.0, 2.5, 0.0])
    assert modes == [None, "discard", None]
    assert keys == [None, duplicate_key(tracked.message), None]


def test_the_duplicate_key_is_the_digest_of_the_identity_the_service_compares() -> None:
    a = {"task": "a.b", "args": [1, "é"], "kwargs": {"y": 1, "x": [True, None]}}
    b = {"kwargs": {"x": [True, None], "y": 1}, "task": "a.b", "args": [1, "é"], "uuid": "u"}
    assert duplicate_identity(a) == '["a.b",[1,"\\u00e9"],{"x":[true,null],"y":1}]'
    assert duplicate_identity(a) == duplicate_identity(b)  # key order and other keys ignored
    assert duplicate_identity({"task": "a.b"}) == '["a.b",[],{}]'
    assert duplicate_key(a) == hashlib.sha256(duplicate_identity(a).encode()).hexdigest()
    assert duplicate_key(a) != duplicate_key({**a, "args": [1.0, "é"]})
    # One definition: the service's intake uses this very function.
    assert intake_jobs.duplicate_identity is duplicate_identity

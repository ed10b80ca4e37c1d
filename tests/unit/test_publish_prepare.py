"""Building and checking task messages before anything is sent (no database needed)."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from dispatcher.config import NotConfiguredError, reset, setup
from dispatcher.publish import (
    InvalidSubmission,
    RegistrationError,
    prepare_submission,
    registry,
    task,
)
from dispatcher.schema import MAX_NOTIFY_PAYLOAD_BYTES, validator
from support import tasks


@pytest.fixture(autouse=True)
def _config() -> Iterator[None]:
    setup({"version": 1, "brokers": {"pg_notify": {"conninfo": "dbname=x", "channels": ["only"]}}})
    yield
    reset()


def test_defaults_of_a_plain_task() -> None:
    before = time.time()
    submission = prepare_submission(tasks.add, args=[1, 2])
    message = dict(submission.message)
    assert before <= message.pop("time_pub") <= time.time()
    assert message == {
        "task": "support.tasks.add",
        "uuid": submission.uuid,
        "args": [1, 2],
        "kwargs": {},
    }
    assert submission.channel == "only"  # the only configured channel
    assert submission.payloads == (json.dumps(submission.message, separators=(",", ":")),)


def test_decorator_defaults_and_call_overrides() -> None:
    defaults = prepare_submission(tasks.send_email, args=["a@b.c"])
    assert defaults.channel == "support_emails"
    assert defaults.message["timeout"] == 30
    assert defaults.message["on_duplicate"] == "serial"
    override = prepare_submission(
        tasks.send_email,
        args=["a@b.c"],
        queue="other",
        timeout=0,
        on_duplicate="discard",
        uuid="u-1",
    )
    assert override.channel == "other"
    assert override.uuid == "u-1"
    assert override.message["timeout"] == 0
    assert override.message["on_duplicate"] == "discard"


def test_name_bind_and_delay_defaults() -> None:
    message = prepare_submission("support.renamed", args=[3]).message
    assert message["task"] == "support.renamed"
    assert message["bind"] is True
    assert message["delay"] == 2


def test_callable_queue_is_evaluated_per_submission() -> None:
    assert prepare_submission(tasks.dynamic).channel == "support_dynamic"
    calls = iter(["first", "second"])
    assert prepare_submission(tasks.add, args=[1, 2], queue=lambda: next(calls)).channel == "first"
    assert prepare_submission(tasks.add, args=[1, 2], queue=lambda: next(calls)).channel == "second"


def test_unregistered_name_string_is_accepted() -> None:
    message = prepare_submission("elsewhere.tasks.job", kwargs={"x": 1}).message
    assert message["task"] == "elsewhere.tasks.job"
    assert message["kwargs"] == {"x": 1}


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"timeout": -1}, "timeout: must be at least 0, got -1"),
        ({"timeout": "5"}, "timeout: expected number, got string '5'"),
        ({"delay": -0.5}, "delay: must be at least 0, got -0.5"),
        (
            {"on_duplicate": "x"},
            "on_duplicate: 'x' is not one of 'parallel', 'discard', 'serial', 'queue_one'",
        ),
        ({"uuid": ""}, "uuid: '' should be non-empty"),
        (
            {"queue": "c" * 64},
            f"queue: '{'c' * 64}' is not a valid channel name (1-63 bytes of ASCII letters, digits, '_', '.', '-' or ':')",
        ),
        (
            {"queue": "has space"},
            "queue: 'has space' is not a valid channel name (1-63 bytes of ASCII letters, digits, '_', '.', '-' or ':')",
        ),
        (
            {"args": [datetime.date(2026, 1, 1)]},
            "args[0]: a value of type date is not JSON-serialisable",
        ),
        (
            {"kwargs": {"when": {"at": {1, 2}}}},
            "kwargs.when.at: a value of type set is not JSON-serialisable",
        ),
        ({"args": [float("nan")]}, "args[0]: nan is not valid in JSON"),
        ({"delay": float("nan")}, "delay: nan is not valid in JSON"),
        ({"timeout": float("nan")}, "timeout: nan is not valid in JSON"),
        ({"args": "abc"}, "args: expected a list or tuple, got str"),
        ({"kwargs": [("a", 1)]}, "kwargs: expected a dict, got list"),
        (
            {"extra": {"uuid": "x", "task": "y"}},
            "extra: task cannot be set through extra: the task is submit_task()'s first "
            "argument; uuid cannot be set through extra: pass uuid=... to submit_task() or "
            "apply_async() instead",
        ),
        (
            {"extra": {"time_pub": 1}},
            "extra: time_pub cannot be set through extra: the SDK sets it",
        ),
        ({"bind": "yes"}, "bind: expected boolean, got string 'yes'"),
    ],
)
def test_bad_options_are_named(options: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidSubmission) as caught:
        prepare_submission(tasks.add, **options)
    assert str(caught.value) == f"cannot submit support.tasks.add: {reason}"


TOO_MANY_DIGITS = (
    "has more than 4300 digits, too many to send (a service reads integers of at most 4300 digits)"
)


@pytest.fixture(params=["default", "lifted"])
def int_digits_limit(request: pytest.FixtureRequest) -> Iterator[None]:
    """Python's limit on the digits of an integer written out: as it is, or lifted here."""
    before = sys.get_int_max_str_digits()
    if request.param == "lifted":
        sys.set_int_max_str_digits(0)  # a service still reads 4300 digits at most
    yield
    sys.set_int_max_str_digits(before)


@pytest.mark.usefixtures("int_digits_limit")
@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"args": [10**5000]}, f"args[0]: the integer {TOO_MANY_DIGITS}"),
        ({"kwargs": {"n": [1, -(10**4300)]}}, f"kwargs.n[1]: the integer {TOO_MANY_DIGITS}"),
        ({"args": [{10**4300: "key"}]}, f"args[0]: an integer key {TOO_MANY_DIGITS}"),
        ({"extra": {"trace": 10**4300}}, f"extra.trace: the integer {TOO_MANY_DIGITS}"),
    ],
)
def test_an_integer_too_long_for_a_service_is_named(options: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidSubmission) as caught:
        prepare_submission(tasks.add, **options)
    assert str(caught.value) == f"cannot submit support.tasks.add: {reason}"


def test_the_longest_integer_a_service_reads_is_sent() -> None:
    largest = 10**4300 - 1
    submission = prepare_submission(tasks.add, args=[largest, -largest])
    assert submission.message["args"] == [largest, -largest]


def test_an_option_too_long_to_write_out_is_named() -> None:
    with pytest.raises(InvalidSubmission) as caught:
        prepare_submission(tasks.add, args=[1, 2], timeout=10**5000)
    assert str(caught.value) == (
        f"cannot submit support.tasks.add: timeout: the integer {TOO_MANY_DIGITS}"
    )


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"bind": 10**5000}, "bind: expected boolean, got an integer of more than 4300 digits"),
        ({"queue": 10**5000}, "queue: an integer of more than 4300 digits is not a valid channel"),
        (
            {"max_attempts": 10**5000},
            "max_attempts: must be between 1 and 1000, got an integer of more than 4300 digits",
        ),
        (
            {"processor_options": [{"delay": 1}], "delay": 10**5000},
            "processor_options: delay is 1 there but an integer of more than 4300 digits as an",
        ),
    ],
)
def test_every_option_too_long_to_write_out_is_refused_by_its_name(
    options: dict[str, Any], reason: str
) -> None:
    with pytest.raises(InvalidSubmission) as caught:
        prepare_submission("myapp.tasks.x", **options)
    assert str(caught.value).startswith(f"cannot submit myapp.tasks.x: {reason}")


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"timeout": 10**5000}, "timeout: the integer has more than 4300 digits, too many to"),
        ({"max_attempts": 10**5000}, "max_attempts: must be between 1 and 1000, got an integer"),
        ({"queue": 10**5000}, "queue must be a channel name or a function, not an integer of"),
    ],
)
def test_a_registration_option_too_long_to_write_out_is_refused_by_its_name(
    options: dict[str, Any], reason: str
) -> None:
    with pytest.raises(RegistrationError) as caught:

        @task(name="myapp.tasks.too_long", **options)
        def too_long() -> None: ...

    assert reason in str(caught.value)


def test_bad_task_names() -> None:
    with pytest.raises(
        InvalidSubmission,
        match=r"^cannot submit the task 'lambda: 1': task: 'lambda: 1' is not a valid task name",
    ):
        prepare_submission("lambda: 1")

    def not_a_task() -> None: ...

    with pytest.raises(InvalidSubmission) as caught:
        prepare_submission(not_a_task)
    assert str(caught.value).endswith(
        "not_a_task: it is not a registered task; decorate it with @task(...) or pass the task's name as a string"
    )


def test_queue_function_that_fails_is_reported() -> None:
    def broken() -> str:
        raise LookupError("no tenant")

    with pytest.raises(
        InvalidSubmission, match=r"queue: the queue function raised LookupError\('no tenant'\)"
    ):
        prepare_submission(tasks.add, args=[1, 2], queue=broken)


def test_no_channel_determinable() -> None:
    setup(
        {"version": 1, "brokers": {"pg_notify": {"conninfo": "dbname=x", "channels": ["a", "b"]}}}
    )
    with pytest.raises(InvalidSubmission) as caught:
        prepare_submission(tasks.add, args=[1, 2])
    assert str(caught.value) == (
        "cannot submit support.tasks.add: no channel to send it on: pass queue=..., or give the "
        "task a queue with @task(queue=...), or set brokers.pg_notify.default_publish_channel in "
        "config"
    )


def test_no_queue_determinable_among_several_durable_ones() -> None:
    setup({"version": 1, "brokers": {"pg_queue": {"conninfo": "dbname=x", "queues": ["a", "b"]}}})
    with pytest.raises(InvalidSubmission) as caught:
        prepare_submission(tasks.add, args=[1, 2], queue=None)
    assert str(caught.value).endswith(
        "no channel to send it on: pass queue=..., or give the task a queue with "
        "@task(queue=...) (brokers.pg_queue has a default only when it lists one queue, in config)"
    )


def test_not_configured_says_how() -> None:
    reset()
    with pytest.raises(
        NotConfiguredError, match=r"^dispatcher is not configured: call dispatcher\.config\.setup"
    ):
        prepare_submission(tasks.add, args=[1, 2])


def test_queue_given_needs_no_config() -> None:
    reset()
    assert prepare_submission(tasks.add, args=[1, 2], queue="explicit").channel == "explicit"


def test_large_message_becomes_chunks_within_the_limit() -> None:
    submission = prepare_submission(tasks.add, args=["x" * 100_000, '"\\\n' * 5000])
    assert len(submission.payloads) > 10
    envelope_validator = validator("chunk-envelope")
    for payload in submission.payloads:
        assert len(payload.encode()) <= MAX_NOTIFY_PAYLOAD_BYTES
        envelope_validator.validate(json.loads(payload))
    joined = "".join(json.loads(p)["payload"] for p in submission.payloads)
    assert json.loads(joined) == submission.message


def test_message_over_the_maximum_is_refused() -> None:
    with pytest.raises(InvalidSubmission, match=r"over the limit of 8388608$"):
        prepare_submission(tasks.add, args=["x" * (8 * 1024 * 1024)])


def test_registration_rules() -> None:
    def first() -> None: ...

    def second() -> None: ...

    first.__qualname__ = second.__qualname__ = "unique_for_this_test"
    second.__qualname__ = "other_for_this_test"
    task(name="support.test_registration")(first)
    try:
        task(name="support.test_registration")(first)  # the same function again: fine
        with pytest.raises(
            RegistrationError, match=r"already registered for .*unique_for_this_test"
        ):
            task(name="support.test_registration")(second)
    finally:
        registry.unregister("support.test_registration")
    with pytest.raises(RegistrationError, match="no importable name"):
        task()(lambda: None)
    with pytest.raises(RegistrationError, match="is not a valid task name"):
        task(name="not valid")(first)
    with pytest.raises(
        RegistrationError,
        match=r"^cannot register support\.bad: timeout: must be at least 0, got -1$",
    ):
        task(name="support.bad", timeout=-1)(first)
    with pytest.raises(
        RegistrationError, match=r"^cannot register support\.bad: on_duplicate: 'x' is not one of"
    ):
        task(name="support.bad", on_duplicate="x")(first)  # type: ignore[arg-type]
    with pytest.raises(
        RegistrationError,
        match=r"^cannot register support\.bad: queue: 'a b' is not a valid channel name",
    ):
        task(queue="a b", name="support.bad")(first)
    assert "support.bad" not in registry
    with pytest.raises(RegistrationError, match="needs a run"):
        task(name="support.no_run")(type("NoRun", (), {}))


def test_a_generator_function_is_no_task() -> None:
    def numbers() -> Iterator[int]:
        yield 1

    async def async_numbers() -> AsyncIterator[int]:
        yield 1

    class Counting:
        def run(self) -> Iterator[int]:
            yield 1

    said = r"whose body a worker would never run: return the values \(in a list\) instead$"
    with pytest.raises(
        RegistrationError,
        match=r"^cannot register support\.numbers: it is a generator function \(it yields\), "
        + said,
    ):
        task(name="support.numbers")(numbers)
    with pytest.raises(
        RegistrationError, match=r"^cannot register support\.numbers: it is an async generator"
    ):
        task(name="support.numbers")(async_numbers)
    with pytest.raises(
        RegistrationError,
        match=r"^cannot register support\.counting: its run\(\) method is a generator function",
    ):
        task(name="support.counting")(Counting)
    assert "support.numbers" not in registry
    assert "support.counting" not in registry


def test_decorated_objects_stay_callable() -> None:
    assert tasks.add(2, 3) == 5
    assert tasks.Report().run("q1") == "q1"
    assert not hasattr(tasks.undecorated, "delay")
    assert "support.tasks.undecorated" in registry
    assert prepare_submission(tasks.Report, args=["q1"]).message["task"] == "support.tasks.Report"


def test_import_of_the_publisher_loads_no_server_code_and_no_anyio() -> None:
    probe = (
        "import sys, dispatcher.publish, dispatcher.config\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'anyio' or m.startswith('dispatcher.server')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_self_containing_arguments_are_refused_not_crashed_on() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(
        InvalidSubmission, match=r"args: nested more than 63 levels deep, or contains itself"
    ):
        prepare_submission(tasks.add, args=[loop])


def test_generated_uuids_are_version_4() -> None:
    import uuid

    from dispatcher.schema import new_uuid

    values = {new_uuid() for _ in range(1000)}
    assert len(values) == 1000
    for value in values:
        parsed = uuid.UUID(value)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, value)


def test_control_result_matches_node_ids_cut_short_by_postgres() -> None:
    from dispatcher.control import ControlResult
    from dispatcher.schema import node_id_of, service_application_name

    long_id = "n" * 60
    result = ControlResult("alive", replies=[{"node_id": long_id}, {"node_id": "b"}], expected=3)
    seen = node_id_of(service_application_name(long_id))
    assert seen == long_id[:33]
    result.expected_nodes = [seen, "b", "c"]
    assert result.missing == ["c"]
    assert not result.complete


@pytest.mark.parametrize(
    "argument", ["max_attempts", "queue", "processor_options", "connection", "timeout", "args"]
)
def test_an_argument_given_in_extra_is_refused_saying_to_pass_it(argument: str) -> None:
    with pytest.raises(InvalidSubmission) as caught:
        prepare_submission(tasks.add, args=[1, 2], extra={argument: 5, "guid": "g"})
    assert str(caught.value) == (
        f"cannot submit support.tasks.add: extra: {argument} cannot be set through extra: "
        f"pass {argument}=... to submit_task() or apply_async() instead"
    )

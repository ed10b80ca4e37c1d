"""Hostile strings refused while a submission is checked, before anything is sent."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

from dispatcher.config import reset, setup
from dispatcher.publish import InvalidSubmission, prepare_submission


@pytest.fixture(autouse=True)
def _config() -> Iterator[None]:
    setup({"version": 1, "brokers": {"pg_notify": {"conninfo": "dbname=x", "channels": ["jobs"]}}})
    yield
    reset()


@pytest.mark.parametrize(
    ("uuid", "reason"),
    [
        ("a\x00b", "'a\\x00b' holds a NUL character at index 1"),
        ("\x00", "'\\x00' holds a NUL character at index 0"),
        ("ab\udcff", "'ab\\udcff' holds the lone surrogate '\\udcff' at index 2"),
        ("é\ud800", "'é\\ud800' holds the lone surrogate '\\ud800' at index 1"),
    ],
)
def test_only_a_uuid_postgresql_cannot_hold_is_an_invalid_submission(
    uuid: str, reason: str
) -> None:
    with pytest.raises(InvalidSubmission) as caught:
        prepare_submission("myapp.tasks.work", uuid=uuid, queue="jobs")
    assert str(caught.value).startswith(f"cannot submit myapp.tasks.work: uuid: {reason}, ")
    for fine in ("fixed", "é-ü-ß", "😀", "a\nb", "x" * 255):  # any other is kept as given
        assert prepare_submission("myapp.tasks.work", uuid=fine, queue="jobs").uuid == fine


@pytest.mark.parametrize(
    "name", ["a.b\n", "a.b\x00", "a.b\r\nX-Injected: 1", "a.b\udcff", "", " ", "a b"]
)
def test_a_task_name_that_cannot_be_printed_is_shown_quoted(name: str) -> None:
    with pytest.raises(InvalidSubmission) as caught:
        prepare_submission(name, queue="jobs")
    assert str(caught.value).startswith(
        f"cannot submit the task {name!r}: task: {name!r} is not a valid task name"
    )


@pytest.mark.parametrize("task", [123, None, b"myapp.tasks.work"])
def test_a_task_that_is_neither_a_name_nor_a_function_is_named_as_such(task: Any) -> None:
    with pytest.raises(InvalidSubmission) as caught:
        prepare_submission(task, queue="jobs")
    assert str(caught.value) == (
        f"cannot submit {task!r}: task: expected a task name (a string) or a function registered "
        f"with @task, got {type(task).__name__}"
    )


@pytest.mark.parametrize("option", ["timeout", "delay"])
@pytest.mark.parametrize("value", [Decimal("NaN"), Decimal("sNaN"), Decimal("2"), Fraction(1, 3)])
def test_a_number_json_does_not_have_is_an_invalid_submission_naming_the_option(
    option: str, value: Any
) -> None:
    with pytest.raises(InvalidSubmission) as caught:
        prepare_submission("myapp.tasks.work", queue="jobs", **{option: value})
    assert str(caught.value) == (
        f"cannot submit myapp.tasks.work: {option}: expected number, got {value!r}, which is "
        "no number of JSON: give an int or a float"
    )

"""A call the worker could not make is refused when it is submitted, naming the reason."""

from __future__ import annotations

from typing import Any

import pytest

from dispatcher.publish import InvalidSubmission, prepare_submission, task
from support import tasks


@task(queue="q")
def flexible(first: int, *rest: int, scale: float = 1.0, **options: Any) -> None:
    """Takes anything after its first argument."""


@task(queue="q")
def keyword_needed(value: int, *, unit: str) -> None:
    """Needs ``unit`` by keyword."""


@pytest.mark.parametrize(
    ("target", "args", "kwargs", "reason"),
    [
        (tasks.add, [1, 2, 3], {}, "too many positional arguments"),
        (tasks.add, [1], {}, "missing a required argument: 'b'"),
        (tasks.add, [1, 2], {"c": 2}, "got an unexpected keyword argument 'c'"),
        (tasks.add, [1, 2], {"a": 3}, "multiple values for argument 'a'"),
        (tasks.bound, [], {}, "missing a required argument: 'value'"),
        (tasks.Report, [], {}, "missing a required argument: 'period'"),
        (keyword_needed, [1], {}, "missing a required argument: 'unit'"),
        (flexible, [], {"scale": 2}, "missing a required argument: 'first'"),
    ],
)
def test_calls_a_worker_could_not_make_are_refused(
    target: Any, args: list[Any], kwargs: dict[str, Any], reason: str
) -> None:
    with pytest.raises(InvalidSubmission) as refused:
        prepare_submission(target, args=args, kwargs=kwargs, queue="q")
    assert reason in str(refused.value)
    assert str(refused.value).startswith(f"cannot submit {tasks_name(target)}: args, kwargs: ")


def tasks_name(target: Any) -> str:
    return {tasks.bound: "support.renamed"}.get(
        target, f"{target.__module__}.{target.__qualname__}"
    )


def test_the_refusal_shows_the_signature_as_the_caller_fills_it() -> None:
    with pytest.raises(InvalidSubmission) as refused:
        prepare_submission(tasks.bound, queue="q")
    # The bound object is the worker's to pass: not shown, not counted.
    assert str(refused.value) == (
        "cannot submit support.renamed: args, kwargs: missing a required argument: 'value': "
        "the task is support.renamed(value: 'int')"
    )


@pytest.mark.parametrize(
    ("target", "args", "kwargs"),
    [
        (tasks.add, [1, 2], {}),
        (tasks.add, [1], {"b": 2}),
        (tasks.bound, [5], {}),
        (tasks.Report, ["2026-11"], {}),
        (keyword_needed, [1], {"unit": "s"}),
        (flexible, [1, 2, 3], {"scale": 2, "anything": True}),
        ("support.tasks.add", [1, 2], {}),
        ("elsewhere.tasks.not_here", [1, 2, 3, 4], {"x": 1}),  # not registered: not checked
    ],
)
def test_calls_that_fit_go_through(target: Any, args: list[Any], kwargs: dict[str, Any]) -> None:
    submission = prepare_submission(target, args=args, kwargs=kwargs, queue="q")
    assert submission.message["args"] == args


def test_a_name_registered_here_is_checked_like_the_function() -> None:
    with pytest.raises(InvalidSubmission, match="too many positional arguments"):
        prepare_submission("support.tasks.add", args=[1, 2, 3], queue="q")


def test_asking_for_the_bound_object_counts_it() -> None:
    with pytest.raises(InvalidSubmission, match="multiple values for argument 'first'"):
        prepare_submission(flexible, args=[], kwargs={"first": 1}, bind=True, queue="q")
    prepare_submission(flexible, args=[1], bind=True, queue="q")  # the bound object, then 1


@task(queue="q")
def shaped(a: int, b: int = 0, *, c: int = 0) -> None:
    """Takes one or two positional arguments and an optional keyword."""


def test_a_call_shape_once_accepted_does_not_let_other_shapes_through() -> None:
    for _ in range(3):  # the accepted shapes are remembered: later calls take the quick way
        prepare_submission(shaped, args=[1], kwargs={"c": 2}, queue="q")
        prepare_submission(shaped, args=[1, 2], kwargs={"c": 2}, queue="q")
        prepare_submission(shaped, args=[], kwargs={"a": 1, "b": 2}, queue="q")
        for args, kwargs, reason in [
            ([1, 2, 3], {"c": 2}, "too many positional arguments"),
            ([1], {"d": 2}, "unexpected keyword argument 'd'"),
            ([1, 2], {"b": 2}, "multiple values for argument 'b'"),
            ([], {"b": 2, "c": 1}, "missing a required argument: 'a'"),
        ]:
            with pytest.raises(InvalidSubmission, match=reason):
                prepare_submission(shaped, args=args, kwargs=kwargs, queue="q")

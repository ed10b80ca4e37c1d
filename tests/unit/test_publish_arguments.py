"""A call the worker could not make is refused when it is submitted, naming the reason."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import psycopg
import pytest

from dispatcher.publish import (
    InvalidSubmission,
    abatch,
    batch,
    prepare_submission,
    submit_task,
    task,
)
from dispatcher.publish.mistakes import SUBMIT_OPTIONS
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
        "the task is support.renamed(value: int)"
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


@pytest.mark.parametrize(
    ("options", "said"),
    [
        ({"countdown": 5}, "unexpected keyword argument 'countdown' (Celery's countdown is delay="),
        ({"eta": 5}, "unexpected keyword argument 'eta' (Celery's eta is delay="),
        ({"priority": 9}, "(there are no priorities: tasks start in the order they arrive)"),
        ({"queu": "q"}, "unexpected keyword argument 'queu'; did you mean 'queue'?"),
    ],
)
def test_an_option_apply_async_does_not_take_says_what_to_use(
    options: dict[str, Any], said: str
) -> None:
    with pytest.raises(TypeError) as refused:
        tasks.add.apply_async(args=[1, 2], **options)
    assert str(refused.value).startswith("apply_async() got an ")
    assert said in str(refused.value)


def test_apply_async_takes_every_option_submit_task_takes() -> None:
    taken = {
        name
        for name, parameter in inspect.signature(submit_task).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    }
    assert taken - {"args", "kwargs"} == SUBMIT_OPTIONS


def deeply_nested(depth: int) -> list[Any]:
    nested: list[Any] = []
    for _ in range(depth):
        nested = [nested]
    return nested


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        ([1], "extra: expected a dict, got list"),
        ("ab", "extra: expected a dict, got str"),
        ({1: "x"}, "extra: keys must be strings, got 1"),
        # A value inside extra is named by its place in extra.
        ({"a": {"b": {1}}}, "extra.a.b: a value of type set is not JSON-serialisable"),
        ({"a": [float("nan")]}, r"extra.a\[0\]: nan is not valid in JSON"),
        ({"a": 10**5000}, r"extra.a: the integer has more than 4300 digits, .*"),
        ({"a": deeply_nested(70)}, r"extra.a: nested more than 63 levels deep, .*"),
    ],
)
def test_extra_of_the_wrong_shape_is_refused_naming_it(extra: Any, said: str) -> None:
    with pytest.raises(InvalidSubmission, match=f": {said}$"):
        prepare_submission(tasks.add, args=[1, 2], queue="q", extra=extra)


def test_bind_given_against_the_task_says_so() -> None:
    with pytest.raises(InvalidSubmission) as refused:
        prepare_submission(tasks.add, args=[1, 2], queue="q", bind=True)
    assert "too many positional arguments: the task is support.tasks.add(a: int, b: int)" in str(
        refused.value
    )
    assert "bind=True passes the bound task first" in str(refused.value)
    with pytest.raises(InvalidSubmission, match="bind: False, but the task is @task"):
        prepare_submission(tasks.bound, args=[1], queue="q", bind=False)


def test_a_conninfo_given_as_connection_says_what_connection_takes() -> None:
    with pytest.raises(TypeError) as refused:
        tasks.add.apply_async(args=[1, 2], queue="q", connection="host=db dbname=app")
    assert str(refused.value) == (
        "apply_async() needs a psycopg Connection, got str (a psycopg connection object: a "
        "conninfo string goes in the config)"
    )
    with pytest.raises(TypeError) as refused:
        submit_task(tasks.add, args=[1, 2], queue="q", connection="host=db dbname=app")
    assert str(refused.value).startswith("submit_task() needs a psycopg Connection, got str")


def test_a_connection_of_the_other_kind_names_the_method_called() -> None:
    sync_connection: Any = psycopg.Connection.__new__(psycopg.Connection)
    async_connection: Any = psycopg.AsyncConnection.__new__(psycopg.AsyncConnection)
    with pytest.raises(TypeError) as refused:
        tasks.add.apply_async(args=[1, 2], queue="q", connection=async_connection)
    assert str(refused.value) == (
        "apply_async() needs a psycopg Connection, got AsyncConnection; use aapply_async() "
        "with that connection"
    )
    with pytest.raises(TypeError) as refused:
        asyncio.run(tasks.add.aapply_async(args=[1, 2], queue="q", connection=sync_connection))
    assert str(refused.value) == (
        "aapply_async() needs a psycopg AsyncConnection, got Connection; use apply_async() "
        "with that connection"
    )


class _DBAPIConnection:
    """Stands for SQLAlchemy's pool connection: the DBAPI one under .driver_connection."""

    def __init__(self, driver_connection: object) -> None:
        self.driver_connection = driver_connection


class Connection:
    """Stands for SQLAlchemy's Connection (``session.connection()``): same name as psycopg's."""

    __module__ = "sqlalchemy.engine.base"

    def __init__(self, driver_connection: object) -> None:
        self.connection = _DBAPIConnection(driver_connection)


class DatabaseWrapper:
    """Stands for Django's ``connections["default"]``, not connected yet."""

    __module__ = "django.db.backends.postgresql.base"
    connection = None

    def ensure_connection(self) -> None:
        raise AssertionError("not to be called by an error message")


class ConnectionProxy:
    """Stands for ``django.db.connection``: every attribute delegated to the wrapper."""

    __module__ = "django.utils.connection"

    def __getattr__(self, name: str) -> Any:
        raise AssertionError("not to be read by an error message")


class InvalidatedConnection:
    """Stands for SQLAlchemy's Connection invalidated: reading .connection checks one out."""

    __module__ = "sqlalchemy.engine.base"
    __qualname__ = "Connection"

    @property
    def connection(self) -> Any:
        raise AssertionError("not to be read by an error message")


def test_a_wrapper_of_a_psycopg_connection_is_named_in_full_and_told_how_to_unwrap() -> None:
    psycopg_connection: Any = psycopg.Connection.__new__(psycopg.Connection)
    with pytest.raises(TypeError) as refused:
        tasks.add.apply_async(args=[1, 2], queue="q", connection=Connection(psycopg_connection))
    assert str(refused.value) == (
        "apply_async() needs a psycopg Connection, got sqlalchemy.engine.base.Connection (pass "
        "its psycopg connection: .connection.driver_connection; with SQLAlchemy, "
        "session.connection().connection.driver_connection, or in asyncio "
        "(await conn.get_raw_connection()).driver_connection)"
    )
    with pytest.raises(TypeError) as refused:
        submit_task(
            tasks.add, args=[1, 2], queue="q", connection=_DBAPIConnection(psycopg_connection)
        )
    assert str(refused.value) == (
        f"submit_task() needs a psycopg Connection, got {__name__}._DBAPIConnection (pass its "
        "psycopg connection: its .driver_connection)"
    )
    with pytest.raises(TypeError) as refused:
        submit_task(tasks.add, args=[1, 2], queue="q", connection=DatabaseWrapper())
    assert str(refused.value) == (
        "submit_task() needs a psycopg Connection, got "
        "django.db.backends.postgresql.base.DatabaseWrapper (pass its psycopg connection: "
        "django.db.connection.connection, after django.db.connection.ensure_connection())"
    )
    for proxy in (ConnectionProxy(), DatabaseWrapper()):
        with pytest.raises(TypeError) as refused:
            submit_task(tasks.add, args=[1, 2], queue="q", connection=proxy)
        assert str(refused.value).endswith(
            "(pass its psycopg connection: django.db.connection.connection, after "
            "django.db.connection.ensure_connection())"
        )
    with pytest.raises(TypeError) as refused:
        submit_task(tasks.add, args=[1, 2], queue="q", connection=InvalidatedConnection())
    assert str(refused.value) == (
        "submit_task() needs a psycopg Connection, got sqlalchemy.engine.base.Connection (pass "
        "its psycopg connection: .connection.driver_connection; with SQLAlchemy, "
        "session.connection().connection.driver_connection, or in asyncio "
        "(await conn.get_raw_connection()).driver_connection)"
    )
    with pytest.raises(TypeError) as refused:
        tasks.add.apply_async(args=[1, 2], queue="q", connection=object())
    assert str(refused.value) == (
        "apply_async() needs a psycopg Connection, got object (a psycopg connection object)"
    )


@pytest.mark.parametrize("connection", ["dbname=app", 5])
def test_a_batch_checks_its_connection_on_entry(connection: Any) -> None:
    with (
        pytest.raises(TypeError, match=r"^batch\(\) needs a psycopg Connection, got"),
        batch(connection=connection),
    ):
        pass


def test_an_async_batch_checks_its_connection_on_entry() -> None:
    async def enter() -> None:
        async with abatch(connection="dbname=app"):  # type: ignore[arg-type]
            pass

    with pytest.raises(TypeError, match=r"^abatch\(\) needs a psycopg AsyncConnection, got str"):
        asyncio.run(enter())

"""Tasks for the tests of dispatcher.testing (names start with ``support.testing_tasks.``)."""

from __future__ import annotations

import asyncio
from typing import Any

from dispatcher.publish import DispatcherCancel, DispatcherExit, task

CALLS: list[tuple[str, Any]] = []
"""What the tasks were called with, in order: the tests clear it."""


@task(queue="orders")
def add(a: int, b: int) -> int:
    CALLS.append(("add", (a, b)))
    return a + b


@task()
def no_queue(value: Any) -> Any:
    CALLS.append(("no_queue", value))
    return value


@task(queue="orders")
def fail(reason: str) -> None:
    CALLS.append(("fail", reason))
    raise ValueError(reason)


@task(queue="orders")
async def async_double(value: int) -> int:
    await asyncio.sleep(0)
    CALLS.append(("async_double", value))
    return value * 2


@task(queue="orders", bind=True)
def bound(dispatcher: Any, then: str | None = None) -> str:
    CALLS.append(("bound", dispatcher.uuid))
    if then is not None:
        reply = dispatcher.control("run", {"task": then, "args": [1, 2]})
        CALLS.append(("bound_reply", reply))
    return str(dispatcher.uuid)


@task(queue="orders")
class Report:
    def run(self, period: str) -> str:
        CALLS.append(("report", period))
        return period


@task(queue="orders")
def chain(count: int) -> int:
    """Submits itself again until *count* is 0."""
    CALLS.append(("chain", count))
    if count > 0:
        chain.delay(count - 1)
    return count


@task(queue="orders")
def cancelled() -> None:
    raise DispatcherCancel


@task(queue="orders")
def exits() -> str:
    CALLS.append(("exits", None))
    raise DispatcherExit


@task(queue="orders")
def echo_types(value: Any) -> str:
    return type(value).__name__


def forbid_database(monkeypatch: Any, directory: Any) -> None:
    """Make every attempt to connect to PostgreSQL fail the test, and leave no config.

    The test then runs in *directory*, where no ``dispatcher.yml`` is.
    """
    import psycopg

    from dispatcher.config import reset

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("dispatcher.testing opened a database connection")

    monkeypatch.setattr(psycopg.Connection, "connect", refuse)
    monkeypatch.setattr(psycopg.AsyncConnection, "connect", refuse)
    for name in ("DISPATCHER_CONFIG_FILE", "DISPATCHERD_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(directory)
    reset()
    CALLS.clear()

"""Running a task message in this process, as a worker would, minus the process.

The task receives what a worker would pass it: the message's arguments after a trip through
JSON (tuples arrive as lists), a bound object first when the task or message asks for one,
a fresh instance's ``run()`` for a class. A coroutine is awaited: in the caller's event
loop from asyncio code, else in a loop of its own. Then, as in a worker, the message's
``errbacks`` (when the task raised) and ``callbacks`` run, with the message's uuid.
Timeouts, delays and ``on_duplicate`` are not applied. A task submitted by a running task
runs inside it: :data:`MAX_NESTED_RUNS` bounds how deep that goes.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import json
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Final

from dispatcher.publish.errors import DispatcherCancel, DispatcherExit
from dispatcher.publish.mistakes import did_you_mean_task
from dispatcher.publish.registry import registry
from dispatcher.testing.bound import InMemoryBoundTask
from dispatcher.testing.records import TaskRun

MAX_NESTED_RUNS: Final = 100
"""How many runs may be in progress one inside another (a task submitting a task, at once)."""

_nested_runs: contextvars.ContextVar[int] = contextvars.ContextVar("nested_runs", default=0)
"""The runs in progress around the current code, across the threads that wait for coroutines."""


def not_registered(name: str) -> LookupError:
    """The error for running *name*, which is not registered in this process."""
    suggestion = did_you_mean_task(name, registry.names())
    return LookupError(f"task {name!r} is not registered in this process{suggestion}")


class InProcessRunner:
    """Runs task messages here and now, and keeps each :class:`TaskRun`."""

    def __init__(self, propagate: bool) -> None:
        self.propagate = propagate
        """Whether an exception a task raises is raised again to the caller once recorded."""
        self.runs: list[TaskRun] = []
        """Every run, in the order they ended (a task submitted by a task ends first)."""

    def run(self, message: Mapping[str, Any]) -> TaskRun:
        """Run the task of *message*, then its errbacks and callbacks; return its run.

        :raises LookupError: when its task is not registered here.
        :raises Exception: what the task raised, when :attr:`propagate` is set.
        """
        run, call = _start(message)
        with _nested(run):
            try:
                value = call()
                if inspect.isawaitable(value):
                    value = _wait(value)
                run.result = value
                follow = True
            except BaseException as exc:
                follow = _failed(run, exc)
            for follow_up in _follow_ups(run) if follow else ():
                self.run(follow_up)
        return self._ended(run)

    async def arun(self, message: Mapping[str, Any]) -> TaskRun:
        """:meth:`run` from asyncio code: a coroutine task is awaited in the running loop."""
        run, call = _start(message)
        with _nested(run):
            try:
                value = call()
                if inspect.isawaitable(value):
                    value = await value
                run.result = value
                follow = True
            except BaseException as exc:
                follow = _failed(run, exc)
            for follow_up in _follow_ups(run) if follow else ():
                await self.arun(follow_up)
        return self._ended(run)

    def _ended(self, run: TaskRun) -> TaskRun:
        self.runs.append(run)
        if run.outcome == "error" and self.propagate and run.error is not None:
            raise run.error
        return run


@contextmanager
def _nested(run: TaskRun) -> Iterator[None]:
    """Count *run* among the runs in progress for its duration.

    :raises RecursionError: when :data:`MAX_NESTED_RUNS` are in progress already.
    """
    depth = _nested_runs.get()
    if depth >= MAX_NESTED_RUNS:
        raise RecursionError(
            f"cannot run {run.task}: {depth} tasks are running one inside another, each "
            "submitted by the one before (does a task keep submitting itself? captured() "
            "runs them one after another)"
        )
    token = _nested_runs.set(depth + 1)
    try:
        yield
    finally:
        _nested_runs.reset(token)


def _start(message: Mapping[str, Any]) -> tuple[TaskRun, Callable[[], Any]]:
    """The run of *message* (not started yet) and what starts it."""
    decoded: dict[str, Any] = json.loads(json.dumps(message))
    name = decoded["task"]
    entry = registry.get(name)
    if entry is None:
        raise not_registered(name)
    run = TaskRun(task=name, uuid=str(decoded.get("uuid", "")), message=decoded)
    args = list(decoded.get("args", ()))
    kwargs = decoded.get("kwargs", {})
    if entry.bind or decoded.get("bind") is True:
        run.bound = InMemoryBoundTask(run.uuid)
        args.insert(0, run.bound)
    target = entry.target

    def call() -> Any:
        function = target().run if entry.is_class else target
        return function(*args, **kwargs)

    return run, call


def _failed(run: TaskRun, exc: BaseException) -> bool:
    """Record on *run* that it raised *exc*; tell whether its errbacks and callbacks run.

    Raises *exc* again when no worker would catch it (``KeyboardInterrupt``...).
    """
    if isinstance(exc, DispatcherExit):
        return False  # the task is done; its worker would exit at once
    if isinstance(exc, DispatcherCancel):
        run.outcome, run.error = "cancelled", exc
        return False
    if isinstance(exc, Exception):
        run.outcome, run.error = "error", exc
        return True
    raise exc


def _follow_ups(run: TaskRun) -> list[dict[str, Any]]:
    """The errbacks (after an error) then callbacks to run after *run*, with its uuid."""
    kinds = ("errbacks", "callbacks") if run.outcome == "error" else ("callbacks",)
    return [
        {**follow_up, "uuid": run.uuid}
        for kind in kinds
        for follow_up in run.message.get(kind) or ()
        if isinstance(follow_up, Mapping)
    ]


def _wait(awaitable: Awaitable[Any]) -> Any:
    """Run *awaitable* to its end from synchronous code, even inside a running event loop."""

    async def awaited() -> Any:
        return await awaitable

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _run(awaited())
    context = contextvars.copy_context()  # the runs in progress, to bound their nesting
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dispatcher-testing") as pool:
        return pool.submit(context.run, _run, awaited()).result()


def _run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """``asyncio.run(coroutine)``; on Windows on a selector event loop.

    Windows' default, the ``ProactorEventLoop``, cannot run psycopg's async connections, which
    an ``async def`` task submitting through the async API uses.
    """
    factory = asyncio.SelectorEventLoop if sys.platform == "win32" else None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coroutine)

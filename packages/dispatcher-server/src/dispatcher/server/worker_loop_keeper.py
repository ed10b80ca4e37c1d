"""The event loop of a worker's ``async def`` tasks, kept in order from one task to the next.

It is made at the first such task (:class:`~dispatcher.server.worker_loop.TaskLoop`) and
kept for the next ones. After each, the settings the task changed on it (its task factory,
exception handler, debug mode) are put back, and what the task left on it is ended, as
``asyncio.run`` ends it: the callbacks it left due run, the async generators it dropped get their
``finally`` run, the asyncio tasks it left pending are cancelled (and named in a warning,
once per worker). A loop that cannot go on (a cancel interrupted its own code, a task closed
it, or tasks left on it did not end on their cancel) is closed, and the next task gets a
new one, so that nothing of a task runs in a later one.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Mapping
from typing import Any, Final

from dispatcher.server.log_arguments import Phrase
from dispatcher.server.log_records import get_logger
from dispatcher.server.log_text import describe_exception
from dispatcher.server.worker_loop import TaskLoop

logger = get_logger("dispatcher.worker")

LEFTOVER_GRACE: Final = 1.0
"""Seconds the asyncio tasks an ``async def`` task left pending get to end once cancelled."""


class LoopKeeper:
    """Keeps the event loop of ``async def`` tasks: makes it, tidies it after each, replaces it."""

    def __init__(self) -> None:
        self.current: TaskLoop | None = None
        """The event loop of ``async def`` tasks, made at the first one."""
        self.interrupted = False
        """Whether a cancel was raised in the code of that loop itself, which it may have
        left halfway through a change of its state: the loop is then replaced."""
        self._told_leftovers = False
        """Whether the asyncio tasks an ``async def`` task left pending were logged."""
        self._told_settings = False
        """Whether the loop's settings an ``async def`` task changed were logged."""

    def get(self) -> TaskLoop:
        """The event loop of ``async def`` tasks: made anew if it was closed (by a task)."""
        runner = self.current
        if runner is None or runner.loop.is_closed():
            runner = self.current = TaskLoop()
        return runner

    def after_task(self, runner: TaskLoop, message: Mapping[str, Any]) -> None:
        """Put the loop of ``async def`` tasks back in order after one, or replace it.

        It is replaced when a cancel interrupted its own code (it may be halfway through a
        change of its state) or when a task closed it. Otherwise, what the task left on it
        is ended (:meth:`_end_leftovers`), and a thread of its executor still running is
        left to run on: the loop gets a new executor.
        """
        if self.interrupted:
            self.interrupted = False
            self._discard_loop(interrupted=True)
            return
        loop = runner.loop
        if loop.is_closed():
            return  # (replaced before the next task)
        changed = runner.put_back_settings()  # (first: the tidying below creates tasks)
        if changed and not self._told_settings:
            self._told_settings = True
            logger.warning(
                "task %s (uuid %s) changed the event loop of async def tasks (its %s): put back "
                "as they were, for the tasks that follow (said once per worker)",
                message.get("task"),
                message.get("uuid"),
                Phrase(", ".join(changed)),  # (words of ours)
            )
        ready = getattr(loop, "_ready", None)  # callbacks due (an async generator's closing)
        if _EVERY_TASK is None or _EVERY_TASK or ready is None or ready:
            self._end_leftovers(loop, message)
        runner.renew_threads()

    def _end_leftovers(self, loop: asyncio.AbstractEventLoop, message: Mapping[str, Any]) -> None:
        """Cancel the asyncio tasks an ``async def`` task left pending, as ``asyncio.run`` does.

        First the callbacks it left due run, and the async generators it dropped unfinished
        (closed by asyncio in tasks of their own) get :data:`LEFTOVER_GRACE` seconds to run
        their ``finally``. Then each task still pending is cancelled, and gets
        :data:`LEFTOVER_GRACE` seconds to end; a loop with some still pending then is closed
        as it is (a new one runs the next task), so none runs in a later task.
        """
        own: list[asyncio.Task[Any]] = []  # (left pending if interrupted: not the task's)
        try:
            own.append(loop.create_task(asyncio.sleep(0)))
            loop.run_until_complete(own[-1])  # (the callbacks due run first)
            closing = {task for task in asyncio.all_tasks(loop) if _closes_a_generator(task)}
            if closing:
                own.append(loop.create_task(asyncio.wait(closing, timeout=LEFTOVER_GRACE)))
                loop.run_until_complete(own[-1])
        except BaseException:  # one raised what a loop lets through (SystemExit...)
            pass
        left = asyncio.all_tasks(loop)
        if not left:
            return
        strays = {task for task in left.difference(own) if not _closes_a_generator(task)}
        if strays and not self._told_leftovers:
            self._told_leftovers = True
            logger.warning(
                "task %s (uuid %s) left asyncio tasks pending, cancelled when it ended: %s; a "
                "client bound to the event loop that runs a task of its own (a websocket's "
                "keepalive, a Kafka producer's sender) does not survive between tasks: create "
                "it in each task (said once per worker)",
                message.get("task"),
                message.get("uuid"),
                _describe_tasks(strays),
            )
        for task in left:
            task.cancel()
        try:
            pending = loop.run_until_complete(asyncio.wait(left, timeout=LEFTOVER_GRACE))[1]
        except BaseException:  # one raised what a loop lets through (SystemExit...)
            pending = left
        for task in left - pending:
            error = None if task.cancelled() else task.exception()
            if error is not None:
                logger.warning(
                    "task %s (uuid %s) left an asyncio task pending that raised on its cancel: %s",
                    message.get("task"),
                    message.get("uuid"),
                    describe_exception(error),
                )
        if pending:
            logger.warning(
                "task %s (uuid %s) left asyncio tasks pending that did not end on their cancel "
                "(within %g s): their event loop is closed, a new one runs the next task",
                message.get("task"),
                message.get("uuid"),
                LEFTOVER_GRACE,
            )
            self._discard_loop()

    def _discard_loop(self, interrupted: bool = False) -> None:
        """Close the loop of ``async def`` tasks: the next one gets a new loop.

        The async generators left open on it are closed first (see :meth:`TaskLoop.close`),
        unless a cancel *interrupted* the loop's own code: it is closed as it is then.
        """
        if self.current is not None:
            loop, self.current = self.current, None
            with contextlib.suppress(BaseException):
                loop.close(None if interrupted else LEFTOVER_GRACE)

    def close(self) -> None:
        """Release the event loop of ``async def`` tasks, if one was made.

        The async generators tasks kept open are closed (each gets its ``finally`` run, for
        up to :data:`LEFTOVER_GRACE` seconds in all); threads of its executor still running
        are not waited for.
        """
        self._discard_loop()


def _closes_a_generator(task: asyncio.Task[Any]) -> bool:
    """Whether *task* is asyncio closing an async generator dropped unfinished (``aclose()``)."""
    return type(task.get_coro()).__name__ == "async_generator_athrow"


def _describe_tasks(tasks: set[asyncio.Task[Any]], most: int = 5) -> Phrase:
    """``ticks() (asyncio task Task-3), ...``: the coroutine and name of *most* of *tasks*."""
    described = []
    for task in list(tasks)[:most]:
        coroutine = task.get_coro()
        name = getattr(coroutine, "__qualname__", None) or type(coroutine).__name__
        described.append(Phrase("%s() (asyncio task %s)", name, task.get_name()))
    return Phrase.joined(", ", described, more=len(tasks) - most)


def _task_registry() -> set[Any] | None:
    """The set of asyncio's references to every task not yet freed, if one can be read.

    Empty, no task of any event loop is left: known at once, where ``asyncio.all_tasks()``
    costs a few microseconds a task. ``None`` where asyncio keeps no such set (Python 3.14
    keeps its own tasks in lists of its own, and ``all_tasks()`` is quick there).
    """
    if sys.version_info >= (3, 14):
        return None
    registry = getattr(asyncio.tasks, "_all_tasks", None)  # Python 3.11
    if registry is None:
        registry = getattr(asyncio.tasks, "_scheduled_tasks", None)  # 3.12, 3.13
    data = getattr(registry, "data", None)  # a WeakSet's own set
    return data if isinstance(data, set) else None


_EVERY_TASK: Final = _task_registry()
"""See :func:`_task_registry`: checked after each ``async def`` task before asking more."""

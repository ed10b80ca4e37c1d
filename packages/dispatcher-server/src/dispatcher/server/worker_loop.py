"""The event loop a worker runs its ``async def`` tasks on, and the thread's own event loop.

A worker keeps one event loop for its ``async def`` tasks (:class:`TaskLoop`), from task to
task: an ``asyncio.Queue`` or a client kept in a global goes on working in the next task.
The loop is current (``asyncio.get_event_loop()``) only while such a task runs, as under
``asyncio.run()``; between tasks the thread's event loop is what plain tasks made it, put
back as on a fresh worker when one left it unusable (:func:`put_back_thread_loop`).

Threads the loop's default executor runs (``asyncio.to_thread()``, ``run_in_executor(None,
...)``) cannot be stopped: one still running when its task ends (cancelled, or the task
raised while it ran) runs on in the background, as a thread a plain task starts does. The
worker never waits for it: the loop is given a new executor for the next tasks
(:meth:`TaskLoop.renew_threads`), and a loop closed is closed without waiting for its
executor's threads (``asyncio.Runner.close()`` waits for them, without a time limit).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Final, ParamSpec, TypeVar

_P = ParamSpec("_P")
_T = TypeVar("_T")


class _TaskThreads(ThreadPoolExecutor):
    """The default executor of a worker's loop, which knows whether a call it took is unfinished."""

    def __init__(self) -> None:
        super().__init__(thread_name_prefix="asyncio")
        self._unfinished = 0
        self._counting = threading.Lock()

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        """As :meth:`ThreadPoolExecutor.submit`, counting the call until it ends."""
        future = super().submit(fn, *args, **kwargs)
        with self._counting:
            self._unfinished += 1
        future.add_done_callback(self._finished)
        return future

    def _finished(self, future: Future[Any]) -> None:
        with self._counting:
            self._unfinished -= 1

    @property
    def busy(self) -> bool:
        """Whether a call submitted is still waiting or running."""
        return self._unfinished > 0


class TaskLoop:
    """An event loop for ``async def`` tasks, kept from one task to the next."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        """The event loop."""
        self._threads = _TaskThreads()
        self.loop.set_default_executor(self._threads)
        self._debug = self.loop.get_debug()  # (PYTHONASYNCIODEBUG, -X dev)
        self._slow = self.loop.slow_callback_duration

    def put_back_settings(self) -> list[str]:
        """Put back the loop's settings a task changed; return the names of those it did.

        Its task factory and exception handler (a task factory that raises fails every
        later task), its debug mode and ``slow_callback_duration``: a few attribute reads.
        """
        loop = self.loop
        changed = []
        if loop.get_task_factory() is not None:
            loop.set_task_factory(None)
            changed.append("task factory")
        if loop.get_exception_handler() is not None:
            loop.set_exception_handler(None)
            changed.append("exception handler")
        if loop.get_debug() != self._debug:
            loop.set_debug(self._debug)
            changed.append("debug mode")
        if loop.slow_callback_duration != self._slow:
            loop.slow_callback_duration = self._slow
            changed.append("slow_callback_duration")
        return changed

    def run(self, coroutine: Coroutine[Any, Any, _T], context: contextvars.Context) -> _T:
        """Run *coroutine* as an asyncio task in *context*, until it ends; return its result.

        The loop is the thread's current event loop meanwhile, as under ``asyncio.run()``;
        the thread's event loop is then put back as it was.
        """
        held = _thread_loop()
        asyncio.set_event_loop(self.loop)
        try:
            return self.loop.run_until_complete(self.loop.create_task(coroutine, context=context))
        finally:
            _set_thread_loop(held)

    def renew_threads(self) -> bool:
        """Give the loop a new default executor if a call of its own is unfinished.

        The threads of the old one end once their call returns (it is not waited for).
        Returns whether it was renewed.
        """
        if not self._threads.busy:
            return False
        old, self._threads = self._threads, _TaskThreads()
        self.loop.set_default_executor(self._threads)
        old.shutdown(wait=False)
        return True

    def close(self, generators_grace: float | None = None) -> None:
        """Close the loop, without waiting for the threads of its executor.

        First the async generators still open on it (kept by a task in a global) are
        closed, as ``asyncio.Runner.close()`` does: their ``finally`` gets
        *generators_grace* seconds, and what they raise is ignored. ``None``: the loop is
        closed as it is (its state may be halfway through a change).
        """
        self._threads.shutdown(wait=False)  # (loop.close() does too, unless it raises)
        if self.loop.is_running() or self.loop.is_closed():
            return
        if generators_grace is not None:
            with contextlib.suppress(BaseException):
                closing = self.loop.create_task(self.loop.shutdown_asyncgens())
                self.loop.run_until_complete(asyncio.wait({closing}, timeout=generators_grace))
        self.loop.close()


_Held = tuple[asyncio.AbstractEventLoop | None, bool] | None
"""The thread's event loop and whether it was set, or ``None``: nothing set up yet."""


_EVENTS: Final[Any] = asyncio.events if hasattr(asyncio.events, "_event_loop_policy") else None
"""asyncio's module holding the event loop policy (``_event_loop_policy``), where it does."""


def _policy_local() -> Any:
    """Where asyncio's event loop policy keeps the thread's current event loop, if it has one.

    ``None`` until something asks for the policy (no task used asyncio yet), or when a
    policy of the application's keeps it elsewhere.
    """
    policy = None if _EVENTS is None else _EVENTS._event_loop_policy
    return None if policy is None else getattr(policy, "_local", None)


def _thread_loop() -> _Held:
    local = _policy_local()
    if local is None:
        return None
    return getattr(local, "_loop", None), bool(getattr(local, "_set_called", False))


def _set_thread_loop(held: _Held) -> None:
    local = _policy_local()
    if local is None:
        return
    loop, set_called = (None, False) if held is None else held
    try:
        local._loop = loop
        local._set_called = set_called
    except AttributeError:  # a policy of another shape: set it as asyncio lets us
        asyncio.set_event_loop(loop)


def put_back_thread_loop() -> None:
    """Give the thread back an event loop state a later plain task can use, if it lost it.

    ``asyncio.run()`` ends with no current event loop, which has every later
    ``asyncio.get_event_loop()`` of the thread raise ``RuntimeError`` (Python 3.11 to 3.13),
    and a task may close the loop it got so. Either way the state goes back to a fresh
    worker's: none set, ``get_event_loop()`` making one. A loop a plain task made and left
    open is left as it is. Called after every task: a few attribute reads (0.1 to 0.3 µs).
    """
    policy = _EVENTS and _EVENTS._event_loop_policy  # (inlined: after every task)
    if policy is None:
        return
    local = getattr(policy, "_local", None)
    if local is None or not getattr(local, "_set_called", False):
        return
    loop = getattr(local, "_loop", None)
    if loop is None or loop.is_closed():
        _set_thread_loop(None)

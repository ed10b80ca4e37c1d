"""How a worker raises the cancel exception in the task it runs, plain or ``async def``.

In a plain function task, the cancel signal's handler raises the cancel exception
(``DispatcherCancel``) where the task is. An ``async def`` task's event loop is not the
task's code: there, the asyncio task is cancelled instead, and the ``CancelledError`` that
brings into the task's coroutine is turned into the cancel exception on its way in
(:class:`CancelTranslator`), so that the task's ``except DispatcherCancel:`` runs. A cancel
that lands in the event loop's own code has the loop replaced after the task
(:class:`~dispatcher.server.worker_loop_keeper.LoopKeeper`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from types import FrameType
from typing import Any, Final

from dispatcher.publish import DispatcherCancel
from dispatcher.server.worker_frames import in_event_loop_code
from dispatcher.server.worker_loop_keeper import LoopKeeper


class Canceller:
    """Raises the cancel exception in the task running (see the module's docstring)."""

    def __init__(self, loops: LoopKeeper) -> None:
        self._loops = loops
        self.cancel: type[BaseException] = DispatcherCancel
        """What a cancel raises in the task running (dispatcherd's too, for its tasks)."""
        self._async_task: asyncio.Task[Any] | None = None
        """The asyncio task running an ``async def`` task, while it runs."""
        self._cancel_due = False
        """Whether the next ``CancelledError`` thrown into that task is a cancel of ours."""

    def cancel_running(self, frame: FrameType | None) -> None:
        """Raise the cancel exception in the running task, *frame* being where it is now.

        An ``async def`` task's event loop waiting for I/O or a timer, or busy with its own
        work, is not the task's code: there, the exception would come out of the loop, and
        the coroutine would only see a ``CancelledError`` as the loop closes, so that its
        ``except DispatcherCancel:`` would never run. So the asyncio task is cancelled
        instead, and the ``CancelledError`` that brings into the coroutine is turned into
        the cancel exception (:class:`CancelTranslator`).
        """
        task = self._async_task
        if task is None:
            loop = self._loops.current
            if loop is not None and loop.loop.is_running():  # (between the task's steps)
                self._loops.interrupted = True
            raise self.cancel
        if _in_coroutine_step(frame):  # as the translation would have made it
            if in_event_loop_code(frame):
                self._loops.interrupted = True
            raise _cancellation(self.cancel)
        self._cancel_due = True
        task.cancel()
        task.get_loop().call_soon_threadsafe(_nothing)  # wakes the loop from its wait

    def translated(self, exc: asyncio.CancelledError) -> BaseException:
        """What to throw into an async task's coroutine for *exc*, thrown into its task."""
        if not self._cancel_due:
            return exc  # the coroutine's own doing (asyncio.timeout(), say)
        self._cancel_due = False
        return _cancellation(self.cancel)()

    def task_ended(self) -> None:
        """Forget the asyncio task of the task that ended, and a cancel of ours still due."""
        self._async_task, self._cancel_due = None, False


class CancelTranslator:
    """Awaits an ``async def`` task's awaitable step by step, as ``await`` would.

    Except that a ``CancelledError`` thrown in for a cancel of the service's reaches the
    task's code as the cancel exception (``DispatcherCancel``), as in a plain function task.
    """

    __slots__ = ("_awaitable", "_canceller")

    def __init__(self, awaitable: Any, canceller: Canceller) -> None:
        self._awaitable = awaitable
        self._canceller = canceller

    def __await__(self) -> Generator[Any, Any, Any]:
        steps = self._awaitable.__await__()
        self._canceller._async_task = asyncio.current_task()
        sent: Any = None
        thrown: BaseException | None = None
        while True:
            try:
                yielded = steps.send(sent) if thrown is None else steps.throw(thrown)
            except StopIteration as stop:
                return stop.value
            sent, thrown = None, None
            try:
                sent = yield yielded
            except GeneratorExit:
                steps.close()
                raise
            except asyncio.CancelledError as exc:
                thrown = self._canceller.translated(exc)
            except BaseException as exc:  # thrown in by the task: passed on, as await does
                thrown = exc


_STEP_CODE: Final = CancelTranslator.__await__.__code__


_CANCELLATIONS: dict[type[BaseException], type[BaseException]] = {}


def _cancellation(cancel: type[BaseException]) -> type[BaseException]:
    """*cancel* (``DispatcherCancel``) that is also asyncio's ``CancelledError``.

    Thrown into an async task's coroutine, it is caught by the task's ``except
    DispatcherCancel:``, and by what asyncio runs between the task and the loop as the
    cancellation it is: ``wait_for()`` cancels its inner task, a lock its waiter.
    """
    made = _CANCELLATIONS.get(cancel)
    if made is None:
        try:
            made = type(cancel.__name__, (cancel, asyncio.CancelledError), {})
        except TypeError:  # a cancel exception whose layout forbids it: itself, then
            made = cancel
        _CANCELLATIONS[cancel] = made
    return made


def _in_coroutine_step(frame: FrameType | None) -> bool:
    """Whether *frame* is code that a step of an async task's coroutine runs (its own)."""
    while frame is not None and frame.f_back is not None:
        if frame.f_back.f_code is _STEP_CODE:
            return True
        frame = frame.f_back
    return False


def _nothing() -> None:
    """A callback that does nothing: scheduled to wake an event loop up."""


async def awaited(awaitable: Any) -> Any:
    """Await *awaitable*: a coroutine made of any awaitable, for an event loop to run."""
    return await awaitable

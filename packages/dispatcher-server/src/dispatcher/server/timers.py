"""Deadlines kept in one heap and served by one task: timeouts, escalations, delays.

A deadline that no longer matters (the task ended before its timeout, the delayed job was
cancelled) is cancelled: it lets go at once of the call and what it holds (a job, its
message), and leaves the heap with the next rebuild, made once cancelled deadlines are half
of it. Left there until due, the deadlines of quick tasks sent with a timeout of an hour
would keep an hour of tasks.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from typing import Any, Final, Protocol

import anyio

from dispatcher.server.log_records import get_logger

logger = get_logger("dispatcher.timers")


REBUILD_FROM: Final = 64
"""Cancelled deadlines the heap may hold, however small it is, before it is rebuilt."""


class Cancellable(Protocol):
    """A call to be made later, which :meth:`cancel` calls off."""

    def cancel(self) -> None:
        """Call it off (nothing happens if it was made or called off already)."""


class Scheduling(Protocol):
    """Something that calls functions later (:class:`Timers`, or a fake in tests)."""

    def call_later(self, delay: float, function: Callable[..., Any], *args: Any) -> Cancellable:
        """Call ``function(*args)`` in *delay* seconds, unless cancelled first."""


class Timer:
    """One call a :class:`Timers` (or a fake) makes at its deadline, unless cancelled.

    Once made or cancelled, it holds neither the function nor its arguments.
    """

    __slots__ = ("_on_cancel", "args", "function")

    def __init__(
        self,
        function: Callable[..., Any],
        args: tuple[Any, ...],
        on_cancel: Callable[[], None] | None = None,
    ) -> None:
        self.function: Callable[..., Any] | None = function
        self.args = args
        self._on_cancel = on_cancel

    def take(self) -> tuple[Callable[..., Any], tuple[Any, ...]] | None:
        """The call to make now (``None`` if cancelled); it is let go of."""
        function, args = self.function, self.args
        self.function, self.args = None, ()
        return None if function is None else (function, args)

    def cancel(self) -> None:
        """Call it off, letting go of the function and its arguments."""
        if self.function is None:
            return
        self.function, self.args = None, ()
        if self._on_cancel is not None:
            self._on_cancel()


class Timers:
    """Calls functions at given monotonic times. Adding and firing cost O(log n)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self._changed = anyio.Event()
        self._cancelled = 0
        """Cancelled timers still in the heap."""

    def __len__(self) -> int:
        """The calls still to be made."""
        return len(self._heap) - self._cancelled

    def call_at(self, deadline: float, function: Callable[..., Any], *args: Any) -> Timer:
        """Call ``function(*args)`` at *deadline* (``time.monotonic()`` clock), unless cancelled."""
        if not self._heap or deadline < self._heap[0][0]:
            self._changed.set()  # the runner sleeps until a later time: wake it
        timer = Timer(function, args, self._one_cancelled)
        heapq.heappush(self._heap, (deadline, next(self._order), timer))
        return timer

    def call_later(self, delay: float, function: Callable[..., Any], *args: Any) -> Timer:
        """Call ``function(*args)`` in *delay* seconds, unless cancelled."""
        return self.call_at(time.monotonic() + delay, function, *args)

    def _one_cancelled(self) -> None:
        self._cancelled += 1
        if self._cancelled >= REBUILD_FROM and self._cancelled * 2 >= len(self._heap):
            self._heap = [entry for entry in self._heap if entry[2].function is not None]
            heapq.heapify(self._heap)
            self._cancelled = 0

    async def run(self) -> None:
        """Fire due calls until cancelled."""
        while True:
            now = time.monotonic()
            while self._heap and self._heap[0][0] <= now:
                call = heapq.heappop(self._heap)[2].take()
                if call is None:
                    self._cancelled -= 1
                    continue
                function, args = call
                try:
                    function(*args)
                except Exception:  # one failing timer must not stop the others
                    logger.exception("timer %s failed", getattr(function, "__name__", function))
            self._changed = anyio.Event()
            wait = self._heap[0][0] - now if self._heap else None
            with anyio.move_on_after(wait):
                await self._changed.wait()

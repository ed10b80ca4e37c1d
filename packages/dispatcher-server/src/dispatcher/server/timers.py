"""Deadlines kept in one heap and served by one task: timeouts, escalations, delays."""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from typing import Any, Protocol

import anyio

from dispatcher.server.log_records import get_logger

logger = get_logger("dispatcher.timers")


class Scheduling(Protocol):
    """Something that calls functions later (:class:`Timers`, or a fake in tests)."""

    def call_later(self, delay: float, function: Callable[..., Any], *args: Any) -> None:
        """Call ``function(*args)`` in *delay* seconds."""


class Timers:
    """Calls functions at given monotonic times. Adding and firing cost O(log n)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[..., Any], tuple[Any, ...]]] = []
        self._order = itertools.count()
        self._changed = anyio.Event()

    def call_at(self, deadline: float, function: Callable[..., Any], *args: Any) -> None:
        """Call ``function(*args)`` at *deadline* (``time.monotonic()`` clock)."""
        if not self._heap or deadline < self._heap[0][0]:
            self._changed.set()  # the runner sleeps until a later time: wake it
        heapq.heappush(self._heap, (deadline, next(self._order), function, args))

    def call_later(self, delay: float, function: Callable[..., Any], *args: Any) -> None:
        """Call ``function(*args)`` in *delay* seconds."""
        self.call_at(time.monotonic() + delay, function, *args)

    async def run(self) -> None:
        """Fire due calls until cancelled."""
        while True:
            now = time.monotonic()
            while self._heap and self._heap[0][0] <= now:
                _, _, function, args = heapq.heappop(self._heap)
                try:
                    function(*args)
                except Exception:  # one failing timer must not stop the others
                    logger.exception("timer %s failed", getattr(function, "__name__", function))
            self._changed = anyio.Event()
            wait = self._heap[0][0] - now if self._heap else None
            with anyio.move_on_after(wait):
                await self._changed.wait()

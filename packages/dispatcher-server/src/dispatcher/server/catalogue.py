"""The registered task names: learnt once from the first worker, read by everyone else."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Final

from dispatcher.publish.mistakes import close_task_name

MAX_SUGGESTION_CANDIDATES: Final = 5_000
"""Registered names beyond which an unknown task name gets no "did you mean" (one costs a
comparison with each)."""

SUGGESTION_SECONDS: Final = 0.05
"""Seconds of CPU time a second at most spent looking for the registered names close to
unknown ones (each look costs milliseconds with thousands of registered names, up to a
second with long ones, and anyone who can publish can send unknown names): a look stops
when the second's budget is spent, and an unknown name then gets no "did you mean" unless
it was looked up whole before. Only the CPU time counts: on a busy machine a look also waits
for the CPU, and that wait, counted, took the whole budget from a look of a few
milliseconds' work (no unknown name got a suggestion)."""

MAX_REMEMBERED_SUGGESTIONS: Final = 1024
"""Unknown names whose look-up is remembered (the oldest are forgotten first)."""


class TaskCatalogue:
    """Which task names may run. Empty (unknown) until the first worker reports them."""

    def __init__(
        self,
        clock: Callable[[], float] = time.perf_counter,
        cpu_clock: Callable[[], float] = time.thread_time,
    ) -> None:
        self.names: frozenset[str] | None = None
        """The registered names; ``None`` until a worker has said."""
        self.queues: Mapping[str, str] = MappingProxyType({})
        """The queue each task registered with, for tasks that named one (a function
        choosing the queue at each submission is not known here)."""
        self.max_attempts: Mapping[str, int] = MappingProxyType({})
        """The ``max_attempts`` of the tasks registered with one (``@task(max_attempts=)``)."""
        self.timeouts: Mapping[str, float] = MappingProxyType({})
        """The ``timeout`` of the tasks registered with one (``@task(timeout=)``): a message
        that sets none runs under it, whoever published it and however."""
        self._listeners: list[Callable[[frozenset[str]], None]] = []
        self._clock = clock
        """Tells when a second begins (the wall clock)."""
        self._cpu_clock = cpu_clock
        """Tells what a look-up spends: the CPU time of the thread looking."""
        self._close: dict[str, str | None] = {}
        """The registered name close to each unknown name looked up (``None``: none)."""
        self._window = -math.inf
        self._spent = 0.0

    def on_known(self, listener: Callable[[frozenset[str]], None]) -> None:
        """Have *listener(names)* called once the names are known."""
        self._listeners.append(listener)

    def learn(self, names: frozenset[str], details: Mapping[str, object] | None = None) -> None:
        """Record the names a worker reported, and *details* (see :meth:`refresh`).

        Only the first worker's count.
        """
        if self.names is not None:
            return
        self.refresh(names, details)
        for listener in self._listeners:
            listener(names)

    def refresh(self, names: frozenset[str], details: Mapping[str, object] | None = None) -> None:
        """Replace the names, and what *details* says of them, by those of reloaded code.

        *details* is a worker's ``ready`` event: its ``queues``, ``max_attempts`` and
        ``timeouts`` map task names to their registered values (anything else is ignored).
        Listeners are not told.
        """
        details = details or {}
        self.names = names
        self._close.clear()
        self.queues = _values(details.get("queues"), lambda queue: isinstance(queue, str))
        self.max_attempts = _values(
            details.get("max_attempts"), lambda attempts: type(attempts) is int
        )
        self.timeouts = _values(details.get("timeouts"), _is_timeout)

    def close_name(self, name: object) -> str | None:
        """The registered name *name* is likely a typo of, if one is known to be.

        Looked up for at most :data:`SUGGESTION_SECONDS` of CPU time a second in all (a
        look-up stops when they are spent), and remembered when the look-up ended; ``None``
        otherwise, as for a name close to none (or before the names are known).
        """
        names = self.names
        if names is None or not isinstance(name, str) or len(names) > MAX_SUGGESTION_CANDIDATES:
            return None
        if name in self._close:
            return self._close[name]
        now = self._clock()
        if now - self._window >= 1.0:
            self._window, self._spent = now, 0.0
        if self._spent >= SUGGESTION_SECONDS:
            return None
        began = self._cpu_clock()
        deadline = began + SUGGESTION_SECONDS - self._spent
        try:
            close = close_task_name(name, names, deadline, self._cpu_clock)
        except TimeoutError:  # not remembered: it may be found whole in a later second
            self._spent = SUGGESTION_SECONDS
            return None
        self._spent += self._cpu_clock() - began
        if len(self._close) >= MAX_REMEMBERED_SUGGESTIONS:
            del self._close[next(iter(self._close))]
        self._close[name] = close
        return close


def _is_timeout(seconds: object) -> bool:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        return False
    return math.isfinite(seconds) and seconds > 0


def _values(found: object, wanted: Callable[[object], bool]) -> MappingProxyType[str, Any]:
    """The entries of the mapping *found* (if it is one) whose values are *wanted*."""
    if not isinstance(found, dict):
        return MappingProxyType({})
    return MappingProxyType({task: value for task, value in found.items() if wanted(value)})

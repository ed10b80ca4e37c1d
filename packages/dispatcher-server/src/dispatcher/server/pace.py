"""How long each task has taken lately: jobs are sent ahead only behind quick tasks.

A job held ahead waits for the task before it on the same worker, so it is sent only when
that task has been quick every time lately: one slow run (a stall, a timeout) keeps its
task from being followed by a job held ahead for dozens of runs after it.
"""

from __future__ import annotations

from collections.abc import Container
from typing import Final

QUICK_SECONDS: Final = 0.002
"""A task is quick when its recent runs, slow ones weighing longest, took less than this
(the default of ``service.pool.hold_ahead_below``)."""

DECAY: Final = 0.9
"""How much of a task's slowest recent run each new run keeps in memory."""


class TaskPace:
    """A decaying maximum of each task's run time."""

    def __init__(self, quick: float = QUICK_SECONDS) -> None:
        self._quick = quick
        self._slowest: dict[str, float] = {}

    def record(self, task: str, seconds: float) -> None:
        """*task* ran for *seconds*."""
        previous = self._slowest.get(task, seconds)
        self._slowest[task] = max(seconds, previous * DECAY)

    def is_quick(self, task: str) -> bool:
        """Whether *task* has run quickly lately (a task not seen yet is not)."""
        slowest = self._slowest.get(task)
        return slowest is not None and slowest < self._quick

    def forget(self, task: str) -> None:
        """Drop what is known of *task*."""
        self._slowest.pop(task, None)

    def keep_only(self, tasks: Container[str]) -> None:
        """Drop what is known of every task not among *tasks* (those a reload removed)."""
        for task in [task for task in self._slowest if task not in tasks]:
            del self._slowest[task]

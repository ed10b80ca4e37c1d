"""``delay``: messages held for some seconds, then dispatched as if just received."""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable, Iterable

from dispatcher.server.jobs import Job, JobPick
from dispatcher.server.timers import Cancellable, Scheduling


class Delayer:
    """Holds jobs until their delay has passed, then hands them to *on_due*."""

    def __init__(self, timers: Scheduling, on_due: Callable[[Job], object]) -> None:
        self._timers = timers
        self._on_due = on_due
        self._held: dict[int, Job] = {}
        self._due_calls: dict[int, Cancellable] = {}
        """The timer of each held job: cancelled with its job taken out (a job delayed a
        week and cancelled must not leave its timer in the heap for the week)."""
        self._ids = itertools.count()

    def hold(self, job: Job, delay: float) -> None:
        """Keep *job* for *delay* seconds."""
        hold_id = next(self._ids)
        self._held[hold_id] = job
        self._due_calls[hold_id] = self._timers.call_later(delay, self._due, hold_id)

    def _due(self, hold_id: int) -> None:
        self._due_calls.pop(hold_id, None)
        job = self._held.pop(hold_id, None)
        if job is not None:  # else it was cancelled meanwhile
            self._on_due(job)

    def _taken_out(self, hold_ids: Iterable[int]) -> None:
        for hold_id in hold_ids:
            call = self._due_calls.pop(hold_id, None)
            if call is not None:
                call.cancel()

    def remove(self, match: Callable[[Job], bool]) -> list[Job]:
        """Take the held jobs that *match* out; return them."""
        removed = [(i, job) for i, job in self._held.items() if match(job)]
        for hold_id, _ in removed:
            del self._held[hold_id]
        self._taken_out(hold_id for hold_id, _ in removed)
        return [job for _, job in removed]

    def take(self, pick: JobPick) -> list[Job]:
        """Take the held jobs *pick* names out; return them, oldest first.

        Told apart without a Python call for each job (see :meth:`JobPick.flags`).
        """
        flags = list(pick.flags(self._held.values()))
        if not any(flags):
            return []
        taken = list(itertools.compress(self._held.values(), flags))
        self._taken_out(itertools.compress(self._held, flags))
        self._held = dict(itertools.compress(self._held.items(), map(operator.not_, flags)))
        return taken

    @property
    def count(self) -> int:
        """The number of jobs held."""
        return len(self._held)

    def held(self) -> list[Job]:
        """Every held job, oldest first."""
        return list(self._held.values())

    def first(self, limit: int | None = None) -> list[Job]:
        """The first *limit* held jobs (all, without one), oldest first."""
        return list(itertools.islice(self._held.values(), limit))

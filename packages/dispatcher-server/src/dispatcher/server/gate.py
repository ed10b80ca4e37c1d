"""``on_duplicate``: what happens to a task identical to one already queued or running.

Identical means the same ``task``, ``args`` and ``kwargs`` (the uuid does not count). Only
messages that ask for ``discard``, ``serial`` or ``queue_one`` are tracked:

- ``parallel`` (or none): no rule;
- ``discard``: dropped if an identical task is active (queued or running) or blocked;
- ``serial``: blocked while an identical task is active, then released, one at a time;
- ``queue_one``: dropped if an identical task is already blocked, else blocked while one is
  active (so at most one waits).

The rules apply when a job arrives. A blocked job, once released, runs whatever arrived
after it: it becomes active as it leaves the gate, not admitted again (a ``queue_one`` job
re-admitted behind a ``serial`` one blocked after it would be dropped, and that one left
blocked with nothing active ahead of it, forever). So every identity with blocked jobs has
an active one, whose end releases the next.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Iterator

from dispatcher.server.jobs import Job, JobPick


class Admission(enum.Enum):
    """The gate's decision about a job."""

    RUN = "run"
    BLOCK = "block"
    DISCARD = "discard"
    REFUSE = "refuse"
    """It should be blocked, but too many jobs are blocked already."""


class DuplicateGate:
    """Tracks active and blocked jobs by identity; decides about each new job."""

    def __init__(self) -> None:
        self._active: dict[str, int] = {}
        self._blocked: dict[str, deque[Job]] = {}
        self.blocked_count = 0
        """Jobs blocked, in total."""

    def admit(self, job: Job, max_blocked: int | None = None) -> Admission:
        """Decide about *job*; a job allowed to run counts as active until :meth:`finished`.

        A job that should be blocked while *max_blocked* jobs already are is refused.
        """
        key = job.key
        if key is None:
            return Admission.RUN
        active = key in self._active
        blocked = self._blocked.get(key)
        mode = job.on_duplicate
        if mode == "discard" and (active or blocked):
            return Admission.DISCARD
        if mode == "queue_one" and blocked:
            return Admission.DISCARD
        if mode in ("serial", "queue_one") and active:
            if max_blocked is not None and self.blocked_count >= max_blocked:
                return Admission.REFUSE
            self._blocked.setdefault(key, deque()).append(job)
            self.blocked_count += 1
            return Admission.BLOCK
        self._active[key] = self._active.get(key, 0) + 1
        return Admission.RUN

    def finished(self, job: Job) -> Job | None:
        """*job* is no longer active; return the blocked job that may now run, if any.

        The job returned is active already: run it (:meth:`admit` is not for it).
        """
        key = job.key
        if key is None or key not in self._active:
            return None
        self._active[key] -= 1
        if self._active[key]:
            return None
        waiting = self._blocked.get(key)
        if not waiting:
            del self._active[key]
            return None
        released = waiting.popleft()
        self._active[key] = 1
        self.blocked_count -= 1
        if not waiting:
            del self._blocked[key]
        return released

    def remove(self, match: Callable[[Job], bool]) -> list[Job]:
        """Take the blocked jobs that *match* out of the gate; return them."""
        removed = []
        for key in list(self._blocked):
            waiting = self._blocked[key]
            matched = [job for job in waiting if match(job)]
            if not matched:
                continue
            removed += matched
            self.blocked_count -= len(matched)
            kept = deque(job for job in waiting if not match(job))
            if kept:
                self._blocked[key] = kept
            else:
                del self._blocked[key]
        return removed

    def take(self, pick: JobPick) -> list[Job]:
        """Take the blocked jobs *pick* names out of the gate; return them.

        Each key's jobs are told apart without a Python call for each (see
        :meth:`JobPick.flags`): a gate may hold many blocked jobs.
        """
        removed: list[Job] = []
        for key, waiting in list(self._blocked.items()):
            taken, kept = pick.split(waiting)
            if not taken:
                continue
            removed += taken
            self.blocked_count -= len(taken)
            if kept:
                self._blocked[key] = deque(kept)
            else:
                del self._blocked[key]
        return removed

    def blocked(self) -> Iterator[Job]:
        """Every blocked job."""
        for waiting in self._blocked.values():
            yield from waiting

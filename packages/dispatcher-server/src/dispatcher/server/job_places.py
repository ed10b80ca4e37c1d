"""Every place that holds a job, looked at and taken from together.

A job is on a worker (running, or held ahead of its task to run next), in the queue
(:mod:`~dispatcher.server.lanes`), blocked by the duplicate gate
(:mod:`~dispatcher.server.gate`) or held for its delay (:mod:`~dispatcher.server.delayer`).
``running`` and ``cancel`` look at every one of them, in that order: :class:`JobPlaces`
walks them for the scheduler, and counts the bytes of the messages held off the workers.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from operator import attrgetter
from typing import Any, Final

from dispatcher.schema import Outcome
from dispatcher.server.delayer import Delayer
from dispatcher.server.gate import DuplicateGate
from dispatcher.server.jobs import Job, JobPick, Snapshot, describe
from dispatcher.server.lanes import Lanes
from dispatcher.server.runners import Runner

HELD: Final = frozenset({"queued", "blocked", "delayed"})
"""The places that hold jobs not on a worker (:meth:`JobPlaces.take` takes them out)."""

_LINE = attrgetter("line")


class JobPlaces:
    """The places that hold jobs: *workers* (all of them), the *queue*, *gate* and *delayer*."""

    def __init__(
        self,
        workers: Callable[[], Iterable[Runner]],
        queue: Lanes,
        gate: DuplicateGate,
        delayer: Delayer,
    ) -> None:
        self._workers = workers
        self._queue = queue
        self._gate = gate
        self._delayer = delayer
        self.held_bytes = 0
        """Bytes of the messages of jobs submitted and not yet running (nor dropped): kept
        by the scheduler (:meth:`hold`, :meth:`unhold`) as jobs come and go."""

    def hold(self, job: Job) -> None:
        """Count the bytes of *job*, now held off the workers."""
        self.held_bytes += len(job.line)

    def unhold(self, job: Job) -> None:
        """Count the bytes of *job* no longer: it starts, or is dropped."""
        self.held_bytes -= len(job.line)

    def snapshot(self, limit: int | None = None) -> Snapshot:
        """Where every job is now, as lists: on workers, held ahead, queued, blocked, delayed.

        With *limit*, each of the last three places lists its first *limit* jobs only (and
        ``total`` counts them all), so that looking at a long backlog costs no more than what
        a reply can show. The lists are copies: walking them may let the event loop run.
        """
        found = Snapshot()
        for worker in self._workers():
            if worker.job is not None:
                found.places.append((f"worker-{worker.id}", [worker.job]))
            ahead = worker.pending_ahead
            if ahead:
                found.places.append((f"worker-{worker.id} next", list(ahead)))
        found.places += [
            ("queued", list(itertools.islice(self._queue.in_order(), limit))),
            ("blocked", list(itertools.islice(self._gate.blocked(), limit))),
            ("delayed", self._delayer.first(limit)),
        ]
        found.total = sum(len(jobs) for _, jobs in found.places[:-3])
        found.total += self._queue.count + self._gate.blocked_count + self._delayer.count
        return found

    def running(self, uuid: str | None, task: str | None) -> list[dict[str, Any]]:
        """Describe the jobs with this uuid and task name (``None``: any), wherever they are."""
        return [
            describe(job, where)
            for where, jobs in self.snapshot().places
            for job in jobs
            if job.matches(uuid, task)
        ]

    def take(self, pick: JobPick) -> list[tuple[str, list[Job]]]:
        """Cancel the jobs *pick* names, at once, wherever they are; return them by place.

        Running ones are cancelled on their worker, and those held ahead where they are.
        Queued, blocked and delayed ones (the places of :data:`HELD`) are taken out, their
        bytes no longer counted. They are told apart without a Python call for each (see
        :meth:`JobPick.flags`).
        """
        found: list[tuple[str, list[Job]]] = []
        for worker in self._workers():
            job = worker.job
            if job is not None and pick(job):
                worker.cancel(Outcome.CANCELLED)
                found.append((f"worker-{worker.id}", [job]))
            ahead = [
                job
                for job in worker.pending_ahead
                if pick(job) and worker.cancel_ahead(job, Outcome.CANCELLED)
            ]
            if ahead:
                found.append((f"worker-{worker.id} next", ahead))
        held = [("queued", self._queue.take_picked(pick)), ("blocked", self._gate.take(pick))]
        held.append(("delayed", self._delayer.take(pick)))
        for where, jobs in held:
            self.held_bytes -= sum(map(len, map(_LINE, jobs)))
            if jobs:
                found.append((where, jobs))
        return found

    def empty(self) -> list[tuple[str, list[Job]]]:
        """Take every job out of the queue, the gate and the delayer; return them, by place."""
        taken = [(where, list(jobs)) for where, jobs in self.snapshot().places[-3:] if jobs]
        self._queue.clear()
        self._gate.remove(lambda job: True)
        self._delayer.remove(lambda job: True)
        self.held_bytes = 0
        return taken

"""From a submitted job to a worker: delay, duplicate gate, fair queue, matching.

A job submitted is held for its ``delay`` (:mod:`~dispatcher.server.delayer`), passes the
``on_duplicate`` gate (:mod:`~dispatcher.server.gate`), then runs on the longest-idle ready
worker or waits in the queue, fair between the sources of its jobs
(:mod:`~dispatcher.server.lanes`). ``cancel`` and ``running`` look at every place that
holds a job (:mod:`~dispatcher.server.job_places`): workers, the queue, the gate and the
delayer. Each holding place is bounded by ``service.limits``; a job over a limit is
refused, counted (``overloaded``) and logged (:mod:`~dispatcher.server.unstarted`).

While a backlog exists, a busy worker whose task is quick (:attr:`Scheduler.ahead_allowed`)
is also sent the next jobs to hold ahead, several in one write, so that it never waits for
the service between two tasks; an idle service sends one job at a time, for latency. Jobs
held ahead count as queued for ``running`` (``where``: ``worker-N next``) and are cancelled
where they are. A job whose broker holds it only until some time (a lease) is sent ahead
with that time: its worker gives it back unstarted if it comes later.

The scheduler knows workers only through the small
:class:`~dispatcher.server.runners.Runner` protocol.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from dispatcher.config import Limits
from dispatcher.server.delayer import Delayer
from dispatcher.server.gate import Admission, DuplicateGate
from dispatcher.server.job_places import HELD, JobPlaces
from dispatcher.server.jobs import Job, JobPick, Snapshot, describe
from dispatcher.server.lanes import Lanes
from dispatcher.server.protocol import has_start_by, with_start_by
from dispatcher.server.runners import Runner
from dispatcher.server.settlement import ABANDONED
from dispatcher.server.stats import ServiceStats
from dispatcher.server.timers import Scheduling
from dispatcher.server.unstarted import UnstartedJobs


class Scheduler:
    """Decides which job runs where and when.

    *workers* lists every worker (for ``cancel`` and ``running``); *on_backlog* is called
    when a backlog starts (the pool may want another worker).
    """

    def __init__(
        self,
        limits: Limits,
        timers: Scheduling,
        stats: ServiceStats,
        workers: Callable[[], Iterable[Runner]],
        on_backlog: Callable[[], None] = lambda: None,
        settle: Callable[[Job, str], None] = lambda job, outcome: None,
    ) -> None:
        self.limits = limits
        self.on_backlog = on_backlog
        """Called when a backlog starts (the pool may want another worker)."""
        self.on_free: Callable[[], None] = lambda: None
        """Called when a worker becomes free (brokers that pull work may claim more)."""
        self.held_until: Callable[[Job], float] = lambda job: math.inf
        """Until when (``time.monotonic()``) a job with a receipt that waited here may still
        start (set by the service: a durable broker's lease may run out meanwhile). One past
        it is settled ``abandoned``; one sent ahead to a busy worker carries it, and the
        worker gives it back unstarted past it."""
        self.ahead_allowed: Callable[[Runner], int] = lambda worker: 0
        """How many jobs in all this busy worker may hold ahead of its task's end: none
        unless its task is quick, and no more than it runs before it retires (set by the
        pool)."""
        self.ahead_wait = 0.0
        """Seconds a job sent ahead may wait in its worker, at most (set by the pool): a job
        whose broker holds it for less than that (a lease about to need renewing) is not
        sent ahead, so that it never comes to its worker after its ``start_by``."""
        self.is_quick: Callable[[Job], bool] = lambda job: False
        """Whether *job*'s task has run quickly lately (set by the pool): a job sent ahead
        behind one that is not would wait behind a long task while other workers may be
        free, so such a job is the last of the jobs sent ahead at once."""
        self._unstarted = UnstartedJobs(stats, settle)
        self._gate = DuplicateGate()
        self._delayer = Delayer(timers, self._admit)
        self._idle: deque[Runner] = deque()
        self._queue = Lanes()
        self._places = JobPlaces(workers, self._queue, self._gate, self._delayer)
        self._unhold = self._places.unhold  # (called for every job that starts)
        self._closed = False

    # -- jobs in -------------------------------------------------------------------------

    def submit(self, job: Job) -> bool:
        """Take a job: hold it for its delay, pass it through the duplicate gate, run it.

        Returns ``False`` when it is refused because a limit of ``service.limits`` is reached
        (counted and logged here) or the scheduler is closed.
        """
        if self._closed:
            self._unstarted.settle(job, ABANDONED)
            return False
        limits, places = self.limits, self._places
        if places.held_bytes + len(job.line) > limits.max_held_bytes:
            return self._unstarted.refused(job, "max_held_bytes", limits.max_held_bytes)
        if job.delay > 0:
            if self._delayer.count >= limits.max_delayed:
                return self._unstarted.refused(job, "max_delayed", limits.max_delayed)
            places.hold(job)
            self._delayer.hold(job, job.delay)
            return True
        if not self._idle and self._queue.count >= limits.max_queued:
            return self._unstarted.refused(job, "max_queued", limits.max_queued)
        places.hold(job)
        return self._admit(job)

    def _admit(self, job: Job) -> bool:
        """Pass *job* through the gate; ``False`` when it is refused (a discard is not)."""
        if self._closed:
            self._unhold(job)
            self._unstarted.settle(job, ABANDONED)
            return False
        admission = self._gate.admit(job, self.limits.max_blocked)
        if admission is Admission.RUN:
            self._dispatch(job)
        elif admission is Admission.DISCARD:
            self._unhold(job)
            self._unstarted.discarded(job)
        elif admission is Admission.REFUSE:
            self._unhold(job)
            return self._unstarted.refused(job, "max_blocked", self.limits.max_blocked)
        return True

    def _dispatch(self, job: Job) -> None:
        """Run *job* on the longest-idle worker, or queue it in its lane if all are busy."""
        while self._idle:
            worker = self._idle.popleft()
            if worker.is_ready:
                self._start(worker, job)
                return
        queue = self._queue
        queue.add(job)
        if queue.count == 1:
            self.on_backlog()

    def _start(self, worker: Runner, job: Job) -> None:
        self._unhold(job)
        worker.run(job)

    def _start_waiting(self, worker: Runner, job: Job) -> None:
        """Start *job*, which waited in the queue, unless its broker no longer holds it."""
        deadline = self._start_by(job)
        if deadline is not None:
            self._unhold(job)
            # One given back by a worker carries the deadline it had then: a stale one.
            worker.run(stamped(job, deadline) if has_start_by(job.line) else job)

    def _start_by(self, job: Job) -> float | None:
        """Until when *job*, which waited, may start (``math.inf``: no limit).

        ``None`` when its broker no longer holds it: it is then settled and handed back.
        """
        if job.receipt is None:
            return math.inf
        deadline = self.held_until(job)
        if time.monotonic() < deadline:
            return deadline
        self._unhold(job)
        self._unstarted.handed_back(job)
        self.job_ended(job)
        return None

    # -- workers -------------------------------------------------------------------------

    def worker_free(self, worker: Runner) -> None:
        """*worker* ended a task: give it the next queued job, or keep it as idle.

        While jobs wait, a worker running a quick task is also sent the next ones to hold
        ahead (all in one write).
        """
        queue = self._queue
        while queue.count and not self._closed and worker.is_ready:
            self._start_waiting(worker, queue.take())
        if queue.count and not self._closed and worker.room_ahead:
            self._send_ahead(worker)
        if worker.is_ready:
            self._idle.append(worker)
        self.on_free()  # either way there is room for one more job

    def _send_ahead(self, worker: Runner) -> None:
        held = worker.ahead
        if held and not self.is_quick(held[-1]):
            return  # nothing goes behind a job that may be long
        room = min(worker.room_ahead, self.ahead_allowed(worker) - len(held))
        batch: list[Job] = []
        queue = self._queue
        while queue.count and len(batch) < room and self._may_wait_ahead(queue.peek()):
            job = queue.take()
            deadline = self._start_by(job)
            if deadline is None:
                continue
            self._unhold(job)
            batch.append(stamped(job, deadline))  # the worker must not start it later
            if not self.is_quick(job):
                break  # none goes behind it
        worker.hold_ahead(batch)

    def _may_wait_ahead(self, job: Job) -> bool:
        """Whether *job* may be sent ahead: its broker holds it longer than it may wait there.

        One no longer held at all is dealt with when taken.
        """
        if job.receipt is None:
            return True
        left = self.held_until(job) - time.monotonic()
        return left <= 0 or left > self.ahead_wait

    def put_back(self, jobs: Iterable[Job]) -> None:
        """Jobs a worker held ahead and never started: first in the queue again.

        The worker is gone, or it gave them back. They go after the jobs given back before
        them (so that jobs given back one at a time keep their order). They keep their
        place in the duplicate gate; once closed, they are abandoned.
        """
        jobs = list(jobs)
        if self._closed:
            self._unstarted.abandoned_ahead(jobs)
            return
        for job in jobs:
            self._places.hold(job)
        queue = self._queue
        queue.give_back(jobs)
        while queue.count and self._idle:
            worker = self._idle.popleft()
            if worker.is_ready:
                self._start_waiting(worker, queue.take())
            if not worker.is_ready:
                continue
            self._idle.appendleft(worker)  # the job it was given may not start: next one

    def forget(self, worker: Runner) -> None:
        """*worker* is no longer available (stopping or gone)."""
        with contextlib.suppress(ValueError):
            self._idle.remove(worker)

    def job_ended(self, job: Job) -> None:
        """*job* has ended, whatever its outcome: let a blocked duplicate of it in."""
        if job.key is not None:
            released = self._gate.finished(job)
            while released is not None and self._closed:
                self._unhold(released)
                self._unstarted.settle(released, ABANDONED)
                released = self._gate.finished(released)
            if released is not None:
                self._dispatch(released)  # active already: not admitted again

    # -- looking and cancelling ------------------------------------------------------------

    def snapshot(self, limit: int | None = None) -> Snapshot:
        """Where every job is now (see :meth:`JobPlaces.snapshot`)."""
        return self._places.snapshot(limit)

    def running(self, uuid: str | None = None, task: str | None = None) -> list[dict[str, Any]]:
        """Describe the jobs running, queued, blocked and delayed (filtered like cancel).

        Every one: for a bounded look at a long backlog, see :meth:`snapshot`.
        """
        return self._places.running(uuid, task)

    def cancel(self, uuid: str | None = None, task: str | None = None) -> list[dict[str, Any]]:
        """Cancel the jobs with this uuid and/or task name, wherever they are.

        Delayed, blocked and queued copies are removed; running ones are cancelled on their
        worker. Returns what was cancelled.
        """
        if uuid is None and task is None:
            raise ValueError("cancel needs a uuid or a task name")
        return self._cancel(JobPick(uuid, task))

    def cancel_all(self) -> list[dict[str, Any]]:
        """Cancel every job: running, queued, blocked and delayed."""
        return self._cancel(JobPick())

    def _cancel(self, pick: JobPick) -> list[dict[str, Any]]:
        found = []
        for where, jobs in self.take(pick):
            for job in jobs:
                self.cancelled(where, job)
                found.append(describe(job, where))
        return found

    def take(self, pick: JobPick) -> list[tuple[str, list[Job]]]:
        """Cancel the jobs *pick* names, at once, wherever they are; return them by place.

        Running ones are cancelled on their worker, and those held ahead where they are.
        Queued, blocked and delayed ones are taken out, but not yet counted nor settled:
        :meth:`cancelled` does that, for each of them in turn (a cancel of a long backlog
        does it a slice at a time, and lets the event loop run between slices). They are
        told apart without a Python call for each (see :meth:`JobPick.flags`).
        """
        return self._places.take(pick)

    def cancelled(self, where: str, job: Job) -> None:
        """Count and settle *job*, which :meth:`take` took out of *where*, as cancelled.

        One taken off a worker (running or held ahead) is counted when its worker says it
        ended: nothing is done for it here. One that was queued (active in the duplicate
        gate) lets its blocked duplicate in.
        """
        if where not in HELD:
            return
        self._unstarted.cancelled(job)
        if where == "queued":
            self.job_ended(job)

    @property
    def queued(self) -> int:
        """Jobs waiting for a worker."""
        return self._queue.count

    def queued_from(self, broker: str | None) -> int:
        """Jobs that *broker* delivered waiting for a worker (``None``: made inside)."""
        return self._queue.count_from(broker)

    @property
    def blocked(self) -> int:
        """Jobs held back by ``on_duplicate``."""
        return self._gate.blocked_count

    @property
    def delayed(self) -> int:
        """Jobs held for their ``delay``."""
        return self._delayer.count

    @property
    def held_bytes(self) -> int:
        """Bytes of the messages held (queued, delayed or blocked)."""
        return self._places.held_bytes

    def close(self) -> list[tuple[str, list[Job]]]:
        """Take no more jobs; return those abandoned (queued, blocked, delayed), by place."""
        self._closed = True
        abandoned = self._places.empty()
        for _, jobs in abandoned:
            for job in jobs:
                self._unstarted.settle(job, ABANDONED)
        return abandoned


def stamped(job: Job, deadline: float) -> Job:
    """*job* with its *deadline* (``time.monotonic()``) to start in its request line, if any."""
    return job if deadline == math.inf else job._replace(line=with_start_by(job.line, deadline))

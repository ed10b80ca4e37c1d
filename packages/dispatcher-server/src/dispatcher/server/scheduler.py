"""From a submitted job to a worker: delay, duplicate gate, fair queue, matching.

A job submitted is held for its ``delay`` (:mod:`~dispatcher.server.delayer`), passes the
``on_duplicate`` gate (:mod:`~dispatcher.server.gate`), then runs on the longest-idle ready
worker or waits in the queue. ``cancel`` and ``running`` look at every place that holds
a job: workers, the queue, the gate and the delayer. Each holding place is bounded by
``service.limits``; a job over a limit is refused, counted (``overloaded``) and logged.

The queue is fair between the sources of its jobs: each source (a broker's channel or
queue, a socket connection; for a job made inside the service, its task: one lane per
scheduled producer) has a lane of its own, FIFO, and the lanes that hold jobs take turns
(round-robin) to give the next job to a worker. A flood on one channel does not hold up
another channel, a durable queue or a schedule: their next job starts within one turn of
each lane. Jobs a worker gave back unstarted come before every lane, in the order given.

While a backlog exists, a busy worker whose task is quick (:attr:`Scheduler.ahead_allowed`)
is also sent the next jobs to hold ahead, several in one write, so that it never waits for
the service between two tasks; an idle service sends one job at a time, for latency. Jobs
held ahead count as queued for ``running`` (``where``: ``worker-N next``) and are cancelled
where they are. A job whose broker holds it only until some time (a lease) is sent ahead
with that time: its worker gives it back unstarted if it comes later.

The scheduler knows workers only through the small :class:`Runner` protocol.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from operator import attrgetter
from typing import Any, Final, Protocol

from dispatcher.config import Limits
from dispatcher.schema import Outcome
from dispatcher.schema.log_fields import REASON
from dispatcher.server.delayer import Delayer
from dispatcher.server.gate import Admission, DuplicateGate
from dispatcher.server.jobs import Job, JobPick, Snapshot, describe, job_fields, listed
from dispatcher.server.logsafe import counted, get_logger
from dispatcher.server.protocol import has_start_by, with_start_by
from dispatcher.server.ratelimit import RateLimitedLog
from dispatcher.server.settlement import ABANDONED, DISCARDED, REFUSED
from dispatcher.server.stats import ServiceStats
from dispatcher.server.timers import Scheduling

logger = get_logger("dispatcher.scheduler")

_HELD: Final = frozenset({"queued", "blocked", "delayed"})
"""The places that hold jobs not on a worker (:meth:`Scheduler.take` takes them out)."""

_LINE = attrgetter("line")

LANES_KEPT: Final = 64
"""Lanes kept, empty, for sources that may send again, before empty ones are dropped (each
socket connection has its own lane: they come and go)."""


class Runner(Protocol):
    """A worker as the scheduler sees it (a :class:`~dispatcher.server.workers.WorkerHandle`)."""

    @property
    def id(self) -> int:
        """The worker's id."""

    @property
    def job(self) -> Job | None:
        """The job it runs, if any."""

    @property
    def is_ready(self) -> bool:
        """Whether it waits for a job."""

    @property
    def room_ahead(self) -> int:
        """How many jobs it may be sent now to hold ahead (none unless it is busy)."""

    @property
    def ahead(self) -> Sequence[Job]:
        """The jobs it holds ahead, not started yet."""

    @property
    def pending_ahead(self) -> list[Job]:
        """The jobs it holds ahead that are to run: those not cancelled while held."""

    def run(self, job: Job) -> None:
        """Start *job* on it (it is ready)."""

    def hold_ahead(self, jobs: list[Job]) -> None:
        """Send it *jobs* (at most :attr:`room_ahead`) to run after its task, in order."""

    def cancel(self, reason: Outcome = Outcome.CANCELLED) -> None:
        """Cancel its running job."""

    def cancel_ahead(self, job: Job, reason: Outcome = Outcome.CANCELLED) -> bool:
        """Cancel *job*, which it holds ahead."""


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
        self._stats = stats
        self._workers = workers
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
        self._settle = settle
        self._gate = DuplicateGate()
        self._delayer = Delayer(timers, self._admit)
        self._idle: deque[Runner] = deque()
        self._lanes: dict[str | None, dict[str, deque[Job]]] = {}
        """The lanes of the queue, by broker then source (:func:`source`), FIFO each; kept
        when empty (up to about :data:`LANES_KEPT`), so that a busy source makes no new one."""
        self._turns: deque[deque[Job]] = deque()
        """The lanes that hold jobs, in the order of their turns: the first gives the next
        job, then goes last. A lane is in it exactly when it is not empty."""
        self._lane_count = 0
        self._prune_at = LANES_KEPT
        self._returned: deque[Job] = deque()
        """Jobs given back unstarted (:meth:`put_back`): taken before every lane, in the
        order they were given back, so that they keep the order they were sent in."""
        self._queued = 0
        """Jobs in the queue: in the lanes and given back."""
        self._held_bytes = 0
        """Bytes of the messages of jobs submitted and not yet running (nor dropped)."""
        self._closed = False
        self._refusals = RateLimitedLog(logger, logging.WARNING)
        self._hand_backs = RateLimitedLog(logger, logging.INFO)

    # -- jobs in -------------------------------------------------------------------------

    def submit(self, job: Job) -> bool:
        """Take a job: hold it for its delay, pass it through the duplicate gate, run it.

        Returns ``False`` when it is refused because a limit of ``service.limits`` is reached
        (counted and logged here) or the scheduler is closed.
        """
        if self._closed:
            self._settle(job, ABANDONED)
            return False
        limits, size = self.limits, len(job.line)
        if self._held_bytes + size > limits.max_held_bytes:
            return self._refuse(job, "max_held_bytes", limits.max_held_bytes)
        if job.delay > 0:
            if self._delayer.count >= limits.max_delayed:
                return self._refuse(job, "max_delayed", limits.max_delayed)
            self._held_bytes += size
            self._delayer.hold(job, job.delay)
            return True
        if not self._idle and self._queued >= limits.max_queued:
            return self._refuse(job, "max_queued", limits.max_queued)
        self._held_bytes += size
        return self._admit(job)

    def _refuse(self, job: Job, limit: str, value: int) -> bool:
        self._stats.rejected["overloaded"] += 1
        self._settle(job, REFUSED)
        fields = None
        if logger.isEnabledFor(logging.WARNING):
            fields = job_fields("message_rejected", job)
            fields[REASON] = "overloaded"
        self._refusals.log(
            "task %s (uuid %s) refused: service.limits.%s (%d) reached",
            job.task,
            job.uuid,
            limit,
            value,
            extra=fields,
        )
        return False

    def _admit(self, job: Job) -> bool:
        """Pass *job* through the gate; ``False`` when it is refused (a discard is not)."""
        if self._closed:
            self._unhold(job)
            self._settle(job, ABANDONED)
            return False
        admission = self._gate.admit(job, self.limits.max_blocked)
        if admission is Admission.RUN:
            self._dispatch(job)
        elif admission is Admission.DISCARD:
            self._unhold(job)
            self._stats.discarded += 1
            self._settle(job, DISCARDED)
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "task %s (uuid %s) discarded: a duplicate is active",
                    job.task,
                    job.uuid,
                    extra=job_fields("task_discarded", job),
                )
        elif admission is Admission.REFUSE:
            self._unhold(job)
            return self._refuse(job, "max_blocked", self.limits.max_blocked)
        return True

    def _dispatch(self, job: Job) -> None:
        """Run *job* on the longest-idle worker, or queue it in its lane if all are busy."""
        while self._idle:
            worker = self._idle.popleft()
            if worker.is_ready:
                self._start(worker, job)
                return
        lanes = self._lanes.get(job.broker)
        if lanes is None:
            lanes = self._lanes[job.broker] = {}
        key = job.task if job.channel is None else job.channel  # source(job), inlined
        lane = lanes.get(key)
        if lane is None:
            lane = self._new_lane(lanes, key)
        if not lane:
            self._turns.append(lane)
        lane.append(job)
        self._queued += 1
        if self._queued == 1:
            self.on_backlog()

    def _new_lane(self, lanes: dict[str, deque[Job]], key: str) -> deque[Job]:
        if self._lane_count >= self._prune_at:
            for by_source in self._lanes.values():
                for empty in [name for name, lane in by_source.items() if not lane]:
                    del by_source[empty]
            self._lane_count = sum(map(len, self._lanes.values()))
            # Pruned again only once as many more were made: a few jobs' cost each at most.
            self._prune_at = max(LANES_KEPT, 2 * self._lane_count)
        lane = lanes[key] = deque()
        self._lane_count += 1
        return lane

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
        self._settle(job, ABANDONED)
        self.job_ended(job)
        self._hand_backs.log(
            "task %s (uuid %s) not started: its broker no longer holds it (the lease may "
            "have run out); handed back",
            job.task,
            job.uuid,
        )
        return None

    def _unhold(self, job: Job) -> None:
        self._held_bytes -= len(job.line)

    # -- workers -------------------------------------------------------------------------

    def worker_free(self, worker: Runner) -> None:
        """*worker* ended a task: give it the next queued job, or keep it as idle.

        While jobs wait, a worker running a quick task is also sent the next ones to hold
        ahead (all in one write).
        """
        while self._queued and not self._closed and worker.is_ready:
            self._start_waiting(worker, self._take())
        if self._queued and not self._closed and worker.room_ahead:
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
        while self._queued and len(batch) < room and self._may_wait_ahead(self._next()):
            job = self._take()
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

    def _next(self) -> Job:
        """The job :meth:`_take` would take (the queue is not empty)."""
        return self._returned[0] if self._returned else self._turns[0][0]

    def _take(self) -> Job:
        """The next job of the queue, taken out of it.

        One given back, else the first of the lane whose turn it is (which then goes last,
        or out of the turns once empty).
        """
        self._queued -= 1
        if self._returned:
            return self._returned.popleft()
        turns = self._turns
        lane = turns[0]
        job = lane.popleft()
        if not lane:
            turns.popleft()
        elif len(turns) > 1:
            turns.rotate(-1)
        return job

    def put_back(self, jobs: Iterable[Job]) -> None:
        """Jobs a worker held ahead and never started: first in the queue again.

        The worker is gone, or it gave them back. They go after the jobs given back before
        them (so that jobs given back one at a time keep their order). They keep their
        place in the duplicate gate; once closed, they are abandoned.
        """
        jobs = list(jobs)
        if self._closed:
            for job in jobs:
                self._settle(job, ABANDONED)
            if jobs:
                logger.warning(
                    "shutting down with %s held ahead by a worker abandoned: %s",
                    counted(len(jobs), "task"),
                    listed(jobs),
                )
            return
        for job in jobs:
            self._held_bytes += len(job.line)
        self._returned.extend(jobs)
        self._queued += len(jobs)
        while self._queued and self._idle:
            worker = self._idle.popleft()
            if worker.is_ready:
                self._start_waiting(worker, self._take())
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
                self._settle(released, ABANDONED)
                released = self._gate.finished(released)
            if released is not None:
                self._dispatch(released)  # active already: not admitted again

    # -- looking and cancelling ------------------------------------------------------------

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
            ("queued", list(itertools.islice(self._in_order(), limit))),
            ("blocked", list(itertools.islice(self._gate.blocked(), limit))),
            ("delayed", self._delayer.first(limit)),
        ]
        found.total = sum(len(jobs) for _, jobs in found.places[:-3])
        found.total += self._queued + self._gate.blocked_count + self._delayer.count
        return found

    def running(self, uuid: str | None = None, task: str | None = None) -> list[dict[str, Any]]:
        """Describe the jobs running, queued, blocked and delayed (filtered like cancel).

        Every one: for a bounded look at a long backlog, see :meth:`snapshot`.
        """
        return [
            describe(job, where)
            for where, jobs in self.snapshot().places
            for job in jobs
            if job.matches(uuid, task)
        ]

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
        queued: list[Job] = []
        for lane in (self._returned, *self._turns):
            taken, kept = pick.split(lane)
            if taken:
                queued += taken
                lane.clear()
                lane.extend(kept)
        if queued:
            self._turns = deque(lane for lane in self._turns if lane)
            self._queued -= len(queued)
        held = [("queued", queued), ("blocked", self._gate.take(pick))]
        held.append(("delayed", self._delayer.take(pick)))
        for where, jobs in held:
            self._held_bytes -= sum(map(len, map(_LINE, jobs)))
            if jobs:
                found.append((where, jobs))
        return found

    def cancelled(self, where: str, job: Job) -> None:
        """Count and settle *job*, which :meth:`take` took out of *where*, as cancelled.

        One taken off a worker (running or held ahead) is counted when its worker says it
        ended: nothing is done for it here. One that was queued (active in the duplicate
        gate) lets its blocked duplicate in.
        """
        if where not in _HELD:
            return
        self._stats.task_ended(job.task, Outcome.CANCELLED)
        self._settle(job, Outcome.CANCELLED)
        if where == "queued":
            self.job_ended(job)

    def _in_order(self) -> Iterator[Job]:
        """The jobs of the queue, in the order they would be taken (walked lazily).

        Each job costs the same, however many lanes and however uneven: a lane that runs
        out leaves the turns, and the last one left is walked through at once.
        """
        yield from self._returned
        turns = deque(map(iter, self._turns))
        while len(turns) > 1:
            job = next(turns[0], None)
            if job is None:
                turns.popleft()
            else:
                yield job
                turns.rotate(-1)
        if turns:
            yield from turns[0]

    @property
    def queued(self) -> int:
        """Jobs waiting for a worker."""
        return self._queued

    def queued_from(self, broker: str | None) -> int:
        """Jobs that *broker* delivered waiting for a worker (``None``: made inside)."""
        lanes = self._lanes.get(broker)
        count = 0 if lanes is None else sum(map(len, lanes.values()))
        if self._returned:
            count += sum(1 for job in self._returned if job.broker == broker)
        return count

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
        return self._held_bytes

    def close(self) -> list[tuple[str, list[Job]]]:
        """Take no more jobs; return those abandoned (queued, blocked, delayed), by place."""
        self._closed = True
        abandoned = [(where, list(jobs)) for where, jobs in self.snapshot().places[-3:] if jobs]
        for _, jobs in abandoned:
            for job in jobs:
                self._settle(job, ABANDONED)
        for lanes in self._lanes.values():
            for lane in lanes.values():
                lane.clear()
        self._turns.clear()
        self._returned.clear()
        self._queued = 0
        self._gate.remove(lambda job: True)
        self._delayer.remove(lambda job: True)
        self._held_bytes = 0
        return abandoned


def source(job: Job) -> str:
    """The source of *job* within its broker, which has a lane of its own in the queue.

    Its channel or queue (a socket connection); for a job made inside the service (a
    producer's, the ``run`` command's), its task: each schedule has its own lane.
    """
    return job.task if job.channel is None else job.channel


def stamped(job: Job, deadline: float) -> Job:
    """*job* with its *deadline* (``time.monotonic()``) to start in its request line, if any."""
    return job if deadline == math.inf else job._replace(line=with_start_by(job.line, deadline))

"""How many jobs the service would take now: the sums behind the brokers' capacity gauges.

Read over three small protocols (the worker pool, the scheduler's queues, the intake's
held jobs), never over the service or the pool class.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable
from typing import Protocol

from dispatcher.server.jobs import Job


class WorkerLoad(Protocol):
    """A worker as the count sees it: its job, and the jobs held ahead for it."""

    @property
    def job(self) -> Job | None:
        """The job it runs, if any."""

    @property
    def ahead(self) -> Collection[Job]:
        """The jobs held ahead for it, to run next."""

    @property
    def job_since(self) -> float:
        """When (``time.monotonic()``) it began its job."""


class Pool(Protocol):
    """The worker pool: its workers, and how many it may have."""

    @property
    def workers(self) -> Iterable[WorkerLoad]:
        """The workers it has."""

    @property
    def max_workers(self) -> int:
        """The most workers it may have."""


class Queues(Protocol):
    """The scheduler's queues of jobs waiting for a worker."""

    @property
    def queued(self) -> int:
        """Jobs queued, from every source."""

    def queued_from(self, broker: str | None) -> int:
        """Jobs queued from *broker*."""


class Held(Protocol):
    """The intake, which holds task messages until the tasks are known."""

    @property
    def waiting(self) -> int:
        """Task messages held until the first worker says which tasks are registered."""


class FreeCapacity:
    """The service's free capacity, in all and for one broker; how long none has been free."""

    def __init__(self, pool: Pool, queues: Queues, held: Held) -> None:
        self._pool = pool
        self._queues = queues
        self._held = held

    def total(self, ahead: int) -> int:
        """Jobs the service would take now: free worker places less jobs waiting, plus *ahead*.

        Waiting for a worker (queued, or held ahead by a busy one), or for the first worker
        to say which tasks are registered.
        """
        busy = held = 0
        for worker in self._pool.workers:
            if worker.job is not None:
                busy += 1
            held += len(worker.ahead)
        waiting = self._queues.queued + held + self._held.waiting
        return self._pool.max_workers - busy - waiting + ahead

    def for_broker(self, broker: str, ahead: int) -> int:
        """Jobs *broker* may have the service take now, letting *ahead* of them wait.

        Free worker places less the jobs of *broker* waiting for a worker (queued in its
        lanes, or held ahead by a busy one), plus *ahead*: the jobs of other sources that
        wait do not count, as the lanes take turns (see ``scheduler``); a durable broker
        claims while a NOTIFY backlog waits. When none of its jobs waits but others' do,
        it may take one at least, even with no *ahead*: a lane needs a job to take its
        turn, and no worker place would ever be free while that backlog lasts.
        """
        busy = held = own_held = 0
        for worker in self._pool.workers:
            if worker.job is not None:
                busy += 1
            if worker.ahead:
                held += len(worker.ahead)
                own_held += sum(1 for job in worker.ahead if job.broker == broker)
        queued = self._queues.queued_from(broker)
        own = queued + own_held
        free = self._pool.max_workers - busy - own + ahead
        if free <= 0 and not own:
            others = self._queues.queued - queued + held - own_held + self._held.waiting
            if others:
                return 1
        return free

    def busy_for(self) -> float:
        """Seconds every worker place has been taking a job: ``0`` while one is free.

        The age of the youngest running job, once as many run as there may be workers
        (see ``brokers.base.Capacity.busy_for``).
        """
        max_workers = self._pool.max_workers
        busy, latest = 0, 0.0
        for worker in self._pool.workers:
            if worker.job is not None:
                busy += 1
                latest = max(latest, worker.job_since)
        if busy < max_workers:
            return 0.0
        return time.monotonic() - latest

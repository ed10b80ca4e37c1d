"""Counters of what the service has done, for logs, control replies and metrics."""

from __future__ import annotations

import bisect
import time
from collections import Counter, deque
from collections.abc import Container, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

BUCKETS: Final = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0)
"""Upper bounds (seconds) of the histogram buckets; a last one, +Inf, is implied."""

RECENT_FAILURES: Final = 20
"""Failed task runs :attr:`ServiceStats.recent_failures` keeps (the newest ones)."""

MAX_FAILURE_ERROR_CHARS: Final = 200
"""Longest error line kept for a failed task run."""


@dataclass
class Histogram:
    """Counts of observations per bucket, their sum and number (Prometheus semantics)."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0
    count: int = 0

    def observe(self, value: float) -> None:
        """Add one observation."""
        self.counts[bisect.bisect_left(BUCKETS, value)] += 1
        self.total += value
        self.count += 1


@dataclass
class BrokerHealth:
    """Whether a broker serves the service, as it last told: failing since when, and why.

    A broker fails when its ``run()`` fails (the service runs it again), or when it says so
    itself (the pg_notify listener lost its connection, the pg_queue claims fail); it serves
    again once it says it started (or reconnected, or claimed).
    """

    failing_since: float | None = None
    """Since when (seconds since the epoch) it fails; ``None`` while it serves."""
    last_error: str | None = None
    """The first line of its last failure (kept after it serves again)."""
    failures: int = 0
    """Its failures so far."""
    failed_by: str | None = None
    """Which part of the broker said it fails, last (pg_queue's ``renewals``); ``None``: the
    broker itself."""

    def failed(self, error: str, by: str | None = None) -> None:
        """It failed with *error* (one line), as its part *by* (if any) found."""
        if self.failing_since is None:
            self.failing_since = time.time()
        self.last_error = error
        self.failures += 1
        self.failed_by = by

    def serving(self, by: str | None = None) -> None:
        """It serves (again); said by its part *by*, only if that part said it failed last.

        A part that works proves only itself: pg_queue's renewals of leases may work while
        its claims are refused (a missing privilege), while a claim that works proves the
        whole broker serves.
        """
        if by is not None and self.failed_by != by:
            return
        self.failing_since = None
        self.failed_by = None

    def as_reply(self) -> dict[str, Any]:
        """Its part of the ``status`` reply."""
        return {
            "serving": self.failing_since is None,
            "failing_since": self.failing_since,
            "last_error": self.last_error,
            "failures": self.failures,
        }


@dataclass(frozen=True)
class QueueDepth:
    """One durable queue's backlog, as last sampled from its table."""

    ready: int
    """Jobs waiting that may start now (counted up to a cap, see the sampler)."""
    delayed: int
    """Jobs waiting for a later time: a ``delay`` or a retry's backoff (capped likewise)."""
    oldest_ready_age: float
    """Seconds the longest-waiting ready job has been ready; 0 when none is."""


@dataclass(frozen=True)
class QueueSampling:
    """The durable queues' depth as the metrics export it: the last sample, and its age."""

    queues: tuple[str, ...]
    """The configured queues (``brokers.pg_queue.queues``)."""
    depths: Mapping[str, QueueDepth]
    """The last successful sample, by queue; empty before the first one, and once it is too
    old (a reconnect does not blank the series, a lost database does not keep them for
    ever): :attr:`ok` and :attr:`sampled_at` say how old it is."""
    sampled_at: float | None
    """When (seconds since the epoch) the last successful sample was taken, if one was."""
    ok: bool
    """Whether the last attempt to sample succeeded (``False`` before the first)."""


@dataclass(frozen=True)
class Failure:
    """One failed task run, as ``status`` lists it under ``recent_failures``."""

    task: str
    uuid: str
    outcome: str
    """How it ended: ``error``, ``timeout``, ``killed``, ``worker_lost``, ``memory_exceeded``."""
    error: str
    """The first line of its error, cut to :data:`MAX_FAILURE_ERROR_CHARS`."""
    time: float
    """When it ended, in seconds since the epoch."""

    def as_reply(self) -> dict[str, Any]:
        """Its entry in the ``status`` reply."""
        return {
            "task": self.task,
            "uuid": self.uuid,
            "outcome": self.outcome,
            "error": self.error,
            "time": self.time,
        }


@dataclass
class ServiceStats:
    """Running totals since the service started."""

    received: int = 0
    """Messages received (a chunked message counts once, when complete): task and control
    messages, :attr:`received_tasks` and :attr:`received_control`."""
    received_tasks: int = 0
    """Task messages received (dispatcherd's ``received_count``)."""
    received_control: int = 0
    """Control messages received (run, or refused by their schema or the allow-list)."""
    delivered: Counter[str] = field(default_factory=Counter)
    """Payloads each broker handed to the service, by broker name (every payload: task and
    control messages, chunk envelopes, rejected ones; dispatcherd's ``produced_count``)."""
    rejected: Counter[str] = field(default_factory=Counter)
    """Messages rejected, by reason (``not_json``, ``unknown_task``, ...)."""
    finished: Counter[str] = field(default_factory=Counter)
    """Tasks finished, by outcome (``ok``, ``error``, ``timeout``, ``cancelled``, ``killed``,
    ``worker_lost``)."""
    control: int = 0
    """Control commands run (from brokers; bound tasks' calls are not counted)."""
    finished_by_task: Counter[tuple[str, str]] = field(default_factory=Counter)
    """Tasks finished, by (task name, outcome); those of a task a reload removed are
    dropped (see :meth:`forget_tasks`), as are its histograms."""
    queue_wait: dict[str, Histogram] = field(default_factory=dict)
    """Seconds from publication (``time_pub``) to start, by task name."""
    run_time: dict[str, Histogram] = field(default_factory=dict)
    """Seconds from start to end, by task name."""
    discarded: int = 0
    """Tasks dropped by ``on_duplicate`` (``discard``, ``queue_one``)."""
    listener_connects: int = 0
    """Successful connections of the pg_notify listener (the first, then each reconnect)."""
    listener_failures: int = 0
    """Times the pg_notify listener lost (or could not open) its connection."""
    self_checks: int = 0
    """Successful self-check round trips of the pg_notify listener."""
    self_check_seconds: float = 0.0
    """Their time in all (seconds)."""
    self_check_max_seconds: float = 0.0
    """The longest of them (seconds)."""
    workers_started: int = 0
    """Worker processes started."""
    workers_lost: int = 0
    """Worker processes that died without being asked to stop."""
    workers_retired: int = 0
    """Workers replaced after ``max_tasks_per_worker`` tasks or ``max_worker_lifetime``."""
    pg_queue_claims: Counter[str] = field(default_factory=Counter)
    """Jobs claimed from the durable queue, by queue."""
    pg_queue_retries: Counter[str] = field(default_factory=Counter)
    """Jobs of the durable queue put back to wait for another attempt, by queue."""
    pg_queue_failures: Counter[str] = field(default_factory=Counter)
    """Jobs of the durable queue left ``failed`` (attempts used up, or rejected), by queue."""
    pg_queue_lease_expiries: Counter[str] = field(default_factory=Counter)
    """Jobs of the durable queue recovered after their claim's lease ran out, by queue."""
    pg_queue_connects: int = 0
    """Connections the pg_queue broker opened for claims and for its other work."""
    pg_queue_connect_failures: int = 0
    """Times the pg_queue broker could not open (or set up) such a connection."""
    pg_queue_claim_failures: int = 0
    """Claims of the pg_queue broker that failed (no connection, or the statement failed)."""
    pg_queue_failing_since: float | None = None
    """When (seconds since the epoch) the claims began to fail; ``None`` while they work."""
    pg_queue_last_error: str | None = None
    """The first line of the last pg_queue failure (connecting or claiming)."""
    pg_queue_last_error_time: float | None = None
    """When it happened (seconds since the epoch)."""
    recent_failures: deque[Failure] = field(default_factory=lambda: deque(maxlen=RECENT_FAILURES))
    """The last :data:`RECENT_FAILURES` failed task runs, oldest first."""
    brokers: dict[str, BrokerHealth] = field(default_factory=dict)
    """Each broker's health, by name (see :meth:`broker`)."""

    def broker(self, name: str) -> BrokerHealth:
        """The health of the broker *name* (serving, until it says otherwise)."""
        health = self.brokers.get(name)
        if health is None:
            health = self.brokers[name] = BrokerHealth()
        return health

    def task_ended(self, task: str, outcome: str) -> None:
        """Count a task that ended with *outcome*."""
        self.finished[outcome] += 1
        self.finished_by_task[task, outcome] += 1

    def task_failed(self, task: str, uuid: str, outcome: str, error: str, when: float) -> None:
        """Remember a failed run among :attr:`recent_failures` (*error*: its first line is kept)."""
        line = (error.strip().splitlines() or [outcome])[0]
        if len(line) > MAX_FAILURE_ERROR_CHARS:
            line = line[: MAX_FAILURE_ERROR_CHARS - 3] + "..."
        self.recent_failures.append(Failure(task, uuid, outcome, line, when))

    def task_refused(self) -> None:
        """Count a job whose task was no longer registered when its turn came.

        A reload removed it: the job never ran, so it is counted as refused
        (``unknown_task``), as a message naming an unknown task is, and not under its name.
        """
        self.rejected["unknown_task"] += 1

    def forget_tasks(self, keep: Container[str]) -> None:
        """Drop the counters and histograms by task of every task not among *keep*.

        Called when a reload removes tasks: the series of a task that no longer exists
        would otherwise stay for the life of the process, one set for every name ever run.
        """
        for pair in [pair for pair in self.finished_by_task if pair[0] not in keep]:
            del self.finished_by_task[pair]
        for by_task in (self.queue_wait, self.run_time):
            for task in [task for task in by_task if task not in keep]:
                del by_task[task]

    def timings(self, task: str, published: float, started: float, finished: float) -> None:
        """Record a run's queue wait (when it was published) and run time."""
        if published > 0:
            wait = self.queue_wait.get(task) or self.queue_wait.setdefault(task, Histogram())
            wait.observe(max(0.0, started - published))
        run = self.run_time.get(task) or self.run_time.setdefault(task, Histogram())
        run.observe(max(0.0, finished - started))

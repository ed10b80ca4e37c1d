"""Counters of what the service has done, for logs, control replies and metrics."""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field
from typing import Final

BUCKETS: Final = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0)
"""Upper bounds (seconds) of the histogram buckets; a last one, +Inf, is implied."""


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


@dataclass(frozen=True)
class QueueDepth:
    """One durable queue's backlog, as last sampled from its table."""

    ready: int
    """Jobs waiting that may start now (counted up to a cap, see the sampler)."""
    delayed: int
    """Jobs waiting for a later time: a ``delay`` or a retry's backoff (capped likewise)."""
    oldest_ready_age: float
    """Seconds the longest-waiting ready job has been ready; 0 when none is."""


@dataclass
class ServiceStats:
    """Running totals since the service started."""

    received: int = 0
    """Messages received (a chunked message counts once, when complete)."""
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
    """Tasks finished, by (task name, outcome)."""
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

    def task_ended(self, task: str, outcome: str) -> None:
        """Count a task that ended with *outcome*."""
        self.finished[outcome] += 1
        self.finished_by_task[task, outcome] += 1

    def timings(self, task: str, published: float, started: float, finished: float) -> None:
        """Record a run's queue wait (when it was published) and run time."""
        if published > 0:
            wait = self.queue_wait.get(task) or self.queue_wait.setdefault(task, Histogram())
            wait.observe(max(0.0, started - published))
        run = self.run_time.get(task) or self.run_time.setdefault(task, Histogram())
        run.observe(max(0.0, finished - started))

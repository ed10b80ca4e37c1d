"""A copy of the numbers ``/metrics`` shows, taken on the event loop for rendering elsewhere.

Taking it is cheap (copies of counters, no text); rendering it (:mod:`.metrics_text`) may
take a second with thousands of tasks, so it runs in a worker thread, on numbers that no
longer move under it: the series of one scrape agree with each other (a histogram's
buckets with its count), as they did when the text was made on the loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

import anyio.lowlevel

from dispatcher.server.log_handler import log_lines_dropped
from dispatcher.server.metrics_zeros import ZeroSeries
from dispatcher.server.stats import Histogram, QueueSampling, ServiceStats

HistogramCopy = tuple[tuple[int, ...], float, int]
"""A histogram's bucket counts (not cumulative, ``+Inf`` last), sum and count."""


class MetricsNumbers(Protocol):
    """What the metrics' numbers are read from (a :class:`~dispatcher.server.view.ServiceView`)."""

    @property
    def stats(self) -> ServiceStats:
        """The service's counters."""

    def worker_statuses(self) -> dict[str, int]:
        """How many workers are in each status."""

    def counts(self) -> dict[str, Any]:
        """Jobs held: ``queued``, ``blocked``, ``delayed``."""

    def queue_sampling(self) -> QueueSampling | None:
        """The durable queues' last sampled depth; ``None`` without ``brokers.pg_queue``."""

    def registered_tasks(self) -> frozenset[str]:
        """The registered task names (none until the first worker has said)."""


@dataclass(frozen=True, slots=True)
class BrokerCopy:
    """One broker's health as the metrics show it."""

    up: bool
    """Whether it serves (``dispatcher_broker_up``)."""
    failures: int
    """Its failures so far."""


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """The numbers of one scrape, copied: nothing in it changes after it is taken."""

    received: int
    rejected: Mapping[str, int]
    control: int
    finished_by_task: Mapping[tuple[str, str], int]
    zero_lines: str
    """The ``dispatcher_tasks_finished_total`` lines at 0 (see :class:`ZeroSeries`)."""
    discarded: int
    log_lines_dropped: int
    worker_statuses: Mapping[str, int]
    counts: Mapping[str, Any]
    brokers: Mapping[str, BrokerCopy]
    queue_wait: Mapping[str, HistogramCopy]
    run_time: Mapping[str, HistogramCopy]
    sampling: QueueSampling | None
    """The durable queues' sample (``None`` without ``brokers.pg_queue``)."""
    pg_queue_counters: Mapping[str, Mapping[str, int]]
    """``claims``, ``retries``, ``failures``, ``lease_expiries``: each by queue."""


HISTOGRAMS_A_TURN: Final = 1_000
"""Histograms :func:`take_snapshot_in_turns` copies in one turn of the event loop (some
0.3 ms on an idle machine): 20,000 at once (two for each of 10,000 tasks) took it 5 ms
idle, 50 to 90 ms on a loaded one."""


def take_snapshot(source: MetricsNumbers, zeros: ZeroSeries) -> MetricsSnapshot:
    """Copy the numbers of *source* now (on the event loop: they change there)."""
    stats = source.stats
    return _snapshot(source, zeros, _copies(stats.queue_wait), _copies(stats.run_time))


async def take_snapshot_in_turns(source: MetricsNumbers, zeros: ZeroSeries) -> MetricsSnapshot:
    """Copy the numbers of *source*, the histograms :data:`HISTOGRAMS_A_TURN` at a time.

    Each histogram is copied whole (its buckets agree with its count); two of them may be
    copied a few turns of the loop apart, as the series of any scrape are read one after
    the other. The other numbers are copied in the last turn, together.
    """
    stats = source.stats
    queue_wait = await _copies_in_turns(stats.queue_wait)
    run_time = await _copies_in_turns(stats.run_time)
    return _snapshot(source, zeros, queue_wait, run_time)


def _snapshot(
    source: MetricsNumbers,
    zeros: ZeroSeries,
    queue_wait: Mapping[str, HistogramCopy],
    run_time: Mapping[str, HistogramCopy],
) -> MetricsSnapshot:
    stats = source.stats
    finished = dict(stats.finished_by_task)
    sampling = source.queue_sampling()
    if sampling is not None:  # its mapping of depths may be the sampler's own
        sampling = QueueSampling(
            sampling.queues, dict(sampling.depths), sampling.sampled_at, sampling.ok
        )
    return MetricsSnapshot(
        received=stats.received,
        rejected=dict(stats.rejected),
        control=stats.control,
        finished_by_task=finished,
        zero_lines=zeros.lines(source.registered_tasks(), finished),
        discarded=stats.discarded,
        log_lines_dropped=log_lines_dropped(),
        worker_statuses=dict(source.worker_statuses()),
        counts=dict(source.counts()),
        brokers={
            name: BrokerCopy(health.failing_since is None, health.failures)
            for name, health in stats.brokers.items()
        },
        queue_wait=queue_wait,
        run_time=run_time,
        sampling=sampling,
        pg_queue_counters={
            "claims": dict(stats.pg_queue_claims),
            "retries": dict(stats.pg_queue_retries),
            "failures": dict(stats.pg_queue_failures),
            "lease_expiries": dict(stats.pg_queue_lease_expiries),
        },
    )


def _copies(by_task: Mapping[str, Histogram]) -> dict[str, HistogramCopy]:
    return {task: (tuple(h.counts), h.total, h.count) for task, h in by_task.items()}


async def _copies_in_turns(by_task: Mapping[str, Histogram]) -> dict[str, HistogramCopy]:
    """:func:`_copies`, a turn of the loop at a time (the tasks as they were at the start)."""
    items = list(by_task.items())
    copies: dict[str, HistogramCopy] = {}
    for start in range(0, len(items), HISTOGRAMS_A_TURN):
        if start:
            await anyio.lowlevel.checkpoint()
        for task, h in items[start : start + HISTOGRAMS_A_TURN]:
            copies[task] = (tuple(h.counts), h.total, h.count)
    return copies

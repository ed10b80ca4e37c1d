"""The Prometheus text (format 0.0.4) of a :class:`~.metrics_snapshot.MetricsSnapshot`.

Pure: it reads only the snapshot, so it may run in a worker thread while the event loop
goes on (see :mod:`.metrics_scrape`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Final

from dispatcher.server.metrics_labels import labels
from dispatcher.server.metrics_snapshot import HistogramCopy, MetricsSnapshot
from dispatcher.server.rejection import REJECTION_REASONS
from dispatcher.server.stats import BUCKETS, QueueSampling

_ALL_REASONS: Final = frozenset(REJECTION_REASONS)
_BOUNDS: Final = (*(repr(bound) for bound in BUCKETS), "+Inf")


def _family(name: str, kind: str, help: str) -> str:
    return f"# HELP {name} {help}\n# TYPE {name} {kind}\n"


def _histograms(name: str, help: str, by_task: Mapping[str, HistogramCopy]) -> Iterator[str]:
    yield _family(name, "histogram", help)
    for task, (counts, total, count) in sorted(by_task.items()):
        cumulative = 0
        for le, bucket in zip(_BOUNDS, counts, strict=True):
            cumulative += bucket
            yield f"{name}_bucket{labels(task=task, le=le)} {cumulative}\n"
        yield f"{name}_sum{labels(task=task)} {total}\n"
        yield f"{name}_count{labels(task=task)} {count}\n"


def render_snapshot(snapshot: MetricsSnapshot) -> Iterator[str]:
    """The metrics of *snapshot* in the Prometheus text format.

    The counters by reason, and by task and outcome, are exported from the start, at 0, for
    every known reason, and for the registered tasks with each failure outcome (the
    snapshot's :attr:`~.metrics_snapshot.MetricsSnapshot.zero_lines`): an alert on
    ``increase()`` sees the first event after a start only when the series was there before.
    """
    yield _family(
        "dispatcher_messages_received_total",
        "counter",
        "Messages received: task messages and control commands.",
    )
    yield f"dispatcher_messages_received_total {snapshot.received}\n"
    yield _family("dispatcher_messages_rejected_total", "counter", "Messages rejected, by reason.")
    rejected = snapshot.rejected
    for reason in sorted(_ALL_REASONS.union(rejected)):
        count = rejected.get(reason, 0)
        yield f"dispatcher_messages_rejected_total{labels(reason=reason)} {count}\n"
    yield _family("dispatcher_control_commands_total", "counter", "Control commands run.")
    yield f"dispatcher_control_commands_total {snapshot.control}\n"
    yield _family("dispatcher_tasks_finished_total", "counter", "Tasks ended, by task and outcome.")
    for (task, outcome), count in sorted(snapshot.finished_by_task.items()):
        yield f"dispatcher_tasks_finished_total{labels(task=task, outcome=outcome)} {count}\n"
    yield snapshot.zero_lines
    yield _family("dispatcher_tasks_discarded_total", "counter", "Tasks dropped by on_duplicate.")
    yield f"dispatcher_tasks_discarded_total {snapshot.discarded}\n"
    yield _family(
        "dispatcher_log_lines_dropped_total", "counter", "Log lines dropped: the reader behind."
    )
    yield f"dispatcher_log_lines_dropped_total {snapshot.log_lines_dropped}\n"
    yield _family("dispatcher_workers", "gauge", "Worker processes, by status.")
    statuses = snapshot.worker_statuses
    for status in ("starting", "ready", "busy", "stopping"):
        yield f"dispatcher_workers{labels(status=status)} {statuses.get(status, 0)}\n"
    # dispatcherd's two other names, as it exposes them, for dashboards made for it.
    yield _family(
        "dispatcher_control_messages_count_total", "counter", "Control commands (dispatcherd's)."
    )
    yield f"dispatcher_control_messages_count_total {snapshot.control}\n"
    yield _family(
        "dispatcher_worker_count_total", "counter", "Worker processes now (dispatcherd's)."
    )
    yield f"dispatcher_worker_count_total {sum(statuses.values())}\n"
    counts = snapshot.counts
    for name, help, value in (
        ("dispatcher_queue_length", "Tasks waiting for a worker.", counts["queued"]),
        ("dispatcher_blocked_tasks", "Tasks held back by on_duplicate.", counts["blocked"]),
        ("dispatcher_delayed_tasks", "Tasks held for their delay.", counts["delayed"]),
    ):
        yield _family(name, "gauge", help)
        yield f"{name} {value}\n"
    yield from _brokers(snapshot)
    yield from _histograms(
        "dispatcher_queue_wait_seconds", "From publication to start, by task.", snapshot.queue_wait
    )
    yield from _histograms(
        "dispatcher_run_time_seconds", "From start to end, by task.", snapshot.run_time
    )
    if snapshot.sampling is not None:
        yield from _durable_queues(snapshot.sampling, snapshot.pg_queue_counters)


def _brokers(snapshot: MetricsSnapshot) -> Iterator[str]:
    """``dispatcher_broker_up`` and ``dispatcher_broker_failures_total``, by broker."""
    brokers = sorted(snapshot.brokers.items())
    yield _family(
        "dispatcher_broker_up",
        "gauge",
        "Whether a broker serves the service (1), or fails and is being retried (0).",
    )
    for name, health in brokers:
        yield f"dispatcher_broker_up{labels(broker=name)} {int(health.up)}\n"
    yield _family(
        "dispatcher_broker_failures_total",
        "counter",
        "Failures of a broker: a lost connection, a failed claim, a run that failed.",
    )
    for name, health in brokers:
        yield f"dispatcher_broker_failures_total{labels(broker=name)} {health.failures}\n"


_COUNTERS: Final = (
    ("claims", "Jobs claimed from a durable queue by this service."),
    ("retries", "Jobs put back to wait for another attempt."),
    ("failures", "Jobs left failed: attempts used up, or refused."),
    ("lease_expiries", "Jobs taken back after their claim's lease ran out."),
)


def _durable_queues(
    sampling: QueueSampling, counters: Mapping[str, Mapping[str, int]]
) -> Iterator[str]:
    """The ``dispatcher_pg_queue_*`` families: depth gauges, the sample's health, counters.

    Counters are exported for every configured queue, at 0 too: a series that appears only
    once it moves cannot be alerted on.
    """
    depths = sampling.depths
    for name, help, field in (
        ("ready_jobs", "Jobs of a durable queue ready to start (sampled).", "ready"),
        ("delayed_jobs", "Jobs of a durable queue waiting for a later time (sampled).", "delayed"),
        (
            "oldest_ready_age_seconds",
            "How long the oldest ready job of a durable queue has waited (sampled).",
            "oldest_ready_age",
        ),
    ):
        yield _family(f"dispatcher_pg_queue_{name}", "gauge", help)
        for queue, depth in sorted(depths.items()):
            value = getattr(depth, field)
            yield f"dispatcher_pg_queue_{name}{labels(queue=queue)} {value}\n"
    yield _family(
        "dispatcher_pg_queue_sample_ok",
        "gauge",
        "Whether the last sample of the durable queues' depth succeeded (1) or failed (0).",
    )
    yield f"dispatcher_pg_queue_sample_ok {int(sampling.ok)}\n"
    yield _family(
        "dispatcher_pg_queue_sampled_timestamp_seconds",
        "gauge",
        "When the depth gauges were last sampled (0: never).",
    )
    yield f"dispatcher_pg_queue_sampled_timestamp_seconds {sampling.sampled_at or 0}\n"
    for name, help in _COUNTERS:
        counts = counters[name]
        yield _family(f"dispatcher_pg_queue_{name}_total", "counter", help)
        for queue in sorted(set(sampling.queues) | set(depths) | set(counts)):
            count = counts.get(queue, 0)
            yield f"dispatcher_pg_queue_{name}_total{labels(queue=queue)} {count}\n"

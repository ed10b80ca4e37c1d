"""What ``service.metrics`` builds: the metrics server and, with a durable queue, its sampler."""

from __future__ import annotations

from dispatcher.config import Settings
from dispatcher.server.brokers.pg_queue.sampler import QueueSampler
from dispatcher.server.metrics import MetricsServer, MetricsSource


def metrics_parts(
    source: MetricsSource, settings: Settings, node_id: str
) -> tuple[MetricsServer | None, QueueSampler | None]:
    """The metrics server serving *source*, and the durable queues' sampler, as configured.

    Neither without ``service.metrics``; no sampler without a ``pg_queue`` broker.
    """
    metrics = settings.service.metrics
    server = None if metrics is None else MetricsServer(source, metrics.host, metrics.port)
    durable = settings.brokers.pg_queue
    if metrics is None or durable is None:
        return server, None
    sampler = QueueSampler(
        durable.conninfo,
        durable.schema,
        durable.queues,
        application_name=f"dispatcher-sampler:{node_id}"[:63],
    )
    return server, sampler

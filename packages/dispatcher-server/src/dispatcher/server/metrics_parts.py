"""What ``service.metrics`` builds: the metrics server and, with a durable queue, its sampler.

Their modules are imported only when the config asks for them: a service without metrics
would carry them in its memory for nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dispatcher.config import Settings

if TYPE_CHECKING:
    from dispatcher.server.brokers.pg_queue.sampler import QueueSampler
    from dispatcher.server.metrics import MetricsServer, MetricsSource


def metrics_parts(
    source: MetricsSource, settings: Settings, node_id: str
) -> tuple[MetricsServer | None, QueueSampler | None]:
    """The metrics server serving *source*, and the durable queues' sampler, as configured.

    Neither without ``service.metrics``; no sampler without a ``pg_queue`` broker.
    """
    metrics = settings.service.metrics
    if metrics is None:
        return None, None
    from dispatcher.server.metrics import MetricsServer

    server = MetricsServer(source, metrics.host, metrics.port)
    durable = settings.brokers.pg_queue
    if durable is None:
        return server, None
    from dispatcher.server.brokers.pg_queue.sampler import QueueSampler

    sampler = QueueSampler(
        durable.conninfo,
        durable.schema,
        durable.queues,
        application_name=f"dispatcher-sampler:{node_id}"[:63],
    )
    return server, sampler

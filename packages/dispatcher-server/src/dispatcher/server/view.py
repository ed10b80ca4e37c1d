"""The service as control commands and metrics see it: one narrow window over its parts.

:class:`ServiceView` implements :class:`~dispatcher.server.control.ControlTarget` and
:class:`~dispatcher.server.metrics.MetricsSource` by asking the part that owns each fact,
so that neither control nor metrics depends on the service or on the pool's classes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from dispatcher.server.brokers.pg_queue.sampler import QueueSampler
from dispatcher.server.intake import Intake
from dispatcher.server.memory import resident_bytes
from dispatcher.server.metrics import MetricsServer
from dispatcher.server.scheduler import Scheduler
from dispatcher.server.signatures import SignatureCheck
from dispatcher.server.stats import QueueDepth, ServiceStats
from dispatcher.server.supervisor import Supervisor


class ServiceView:
    """Reads and acts on the service's parts for control commands and metrics."""

    def __init__(
        self,
        stats: ServiceStats,
        scheduler: Scheduler,
        supervisor: Supervisor,
        intake: Intake,
        signature_check: SignatureCheck,
    ) -> None:
        self.stats = stats
        self.metrics_server: MetricsServer | None = None
        self.queue_sampler: QueueSampler | None = None
        """Samples the durable queues' depth (set when metrics are on with pg_queue)."""
        self._scheduler = scheduler
        self._supervisor = supervisor
        self._intake = intake
        self._signatures = signature_check

    def running(self, uuid: str | None, task: str | None) -> list[dict[str, Any]]:
        """Jobs running, queued, blocked and delayed, filtered by uuid and/or task."""
        return self._scheduler.running(uuid, task)

    def cancel(self, uuid: str | None, task: str | None) -> list[dict[str, Any]]:
        """Cancel the jobs matching the filter; return them."""
        return self._scheduler.cancel(uuid, task)

    def cancel_all(self) -> list[dict[str, Any]]:
        """Cancel every job; return them."""
        return self._scheduler.cancel_all()

    def workers(self) -> list[dict[str, Any]]:
        """Each worker: id, pid, status, age, tasks done, current task, memory."""
        now = time.monotonic()
        return [
            {
                "id": worker.id,
                "pid": worker.pid,
                "status": worker.status.value,
                "age": round(now - worker.created, 3),
                "tasks_done": worker.tasks_done,
                "current_task": worker.job.task if worker.job else None,
                "current_uuid": worker.job.uuid if worker.job else None,
                "rss_bytes": resident_bytes(worker.pid),
            }
            for worker in self._supervisor.workers
        ]

    def worker_statuses(self) -> dict[str, int]:
        """How many workers are in each status."""
        statuses: dict[str, int] = {}
        for worker in self._supervisor.workers:
            statuses[worker.status.value] = statuses.get(worker.status.value, 0) + 1
        return statuses

    def counts(self) -> dict[str, Any]:
        """Jobs held (``queued``, ``blocked``, ``delayed``) and ``workers`` (count, min, max)."""
        scheduler, supervisor = self._scheduler, self._supervisor
        return {
            "queued": scheduler.queued,
            "blocked": scheduler.blocked,
            "delayed": scheduler.delayed,
            "workers": {
                "count": len(supervisor.workers),
                "min": supervisor.min_workers,
                "max": supervisor.max_workers,
            },
        }

    def queue_depths(self) -> Mapping[str, QueueDepth] | None:
        """The durable queues' last sampled depth; ``None`` when nothing samples them."""
        return None if self.queue_sampler is None else self.queue_sampler.depths

    def chunks(self) -> dict[str, Any]:
        """Incomplete chunked messages being assembled."""
        assembler = self._intake.chunks
        return {
            "partial": len(assembler),
            "partial_bytes": assembler.memory,
            "evicted": assembler.evictions,
            "late_slices": assembler.late_slices,
        }

    def signatures(self) -> dict[str, Any]:
        """The signature settings in force and the replay guard's state."""
        return self._signatures.summary()

    def metrics_endpoint(self) -> dict[str, Any]:
        """Whether the metrics endpoint is on, and where."""
        server = self.metrics_server
        if server is None:
            return {"enabled": False}
        return {
            "enabled": True,
            "host": server.host,
            "port": server.port,
            "requests": server.requests,
        }

    def submit(self, message: dict[str, Any]) -> str:
        """Submit a task message made here (the ``run`` command); return its uuid."""
        return self._intake.submit(message, "control")

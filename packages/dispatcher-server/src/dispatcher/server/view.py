"""The service as control commands and metrics see it: one narrow window over its parts.

:class:`ServiceView` implements :class:`~dispatcher.server.control_target.ControlTarget` and
:class:`~dispatcher.server.metrics.MetricsSource` by asking the part that owns each fact,
so that neither control nor metrics depends on the service or on the pool's classes.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final, Literal

from dispatcher.server.handle_status import LIVE, WorkerStatus
from dispatcher.server.intake import Intake
from dispatcher.server.jobs import Job, JobPick, Snapshot
from dispatcher.server.memory import resident_bytes
from dispatcher.server.scheduler import Scheduler
from dispatcher.server.signatures import SignatureCheck
from dispatcher.server.stats import QueueSampling, ServiceStats
from dispatcher.server.supervisor import Supervisor

if TYPE_CHECKING:  # (imported by the service only when the config asks for them)
    from dispatcher.server.brokers.pg_queue.sampler import QueueSampler
    from dispatcher.server.metrics import MetricsServer

DISPATCHERD_STATUS: Final[Mapping[WorkerStatus, str]] = {
    WorkerStatus.STARTING: "starting",
    WorkerStatus.READY: "ready",
    WorkerStatus.BUSY: "ready",
    WorkerStatus.STOPPING: "stopping",
    WorkerStatus.EXITED: "exited",
}
"""A worker's status in dispatcherd's words (``workers``' ``status``): it has no ``busy``."""

Phase = Literal["starting", "serving", "stopping"]
"""Where a service is in its life: serving once started, until a stop begins."""


def _utc(timestamp: float) -> str:
    """*timestamp* (seconds since the epoch) as ISO 8601 UTC, to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


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
        self.phase: Phase = "starting"
        """Where the service is in its life (set by the service)."""
        self._scheduler = scheduler
        self._supervisor = supervisor
        self._intake = intake
        self._signatures = signature_check

    def readiness(self) -> list[str]:
        """Why the service does not serve now, one reason each; none: it serves.

        It serves once started and until it stops, while every broker serves (as the
        ``brokers`` of ``status`` and ``dispatcher_broker_up`` say). A broker's error is
        not among them: it may name the database's host and role, and the reasons go to
        any client of the metrics port (``/readyz``); ``status`` and the log give it.
        """
        if self.phase != "serving":
            return [f"the service is {self.phase}"]
        return [
            f"the {name} broker is not serving (since {_utc(health.failing_since)})"
            for name, health in sorted(self.stats.brokers.items())
            if health.failing_since is not None
        ]

    def registered_tasks(self) -> frozenset[str]:
        """The registered task names (none until the first worker has said)."""
        return self._intake.catalogue.names or frozenset()

    def snapshot(self, limit: int | None) -> Snapshot:
        """Where the jobs are now (see :meth:`Scheduler.snapshot`)."""
        return self._scheduler.snapshot(limit)

    def take(self, pick: JobPick) -> list[tuple[str, list[Job]]]:
        """Cancel the jobs *pick* names at once; return them by place."""
        return self._scheduler.take(pick)

    def cancelled(self, where: str, job: Job) -> None:
        """Count and settle a job :meth:`take` took out of *where*."""
        self._scheduler.cancelled(where, job)

    def workers(self) -> list[dict[str, Any]]:
        """Each worker, with dispatcherd's fields and ours.

        ``status`` is in dispatcherd's words (:data:`DISPATCHERD_STATUS`: a worker running a
        task is ``ready``, with ``current_task`` set); ``state`` is ours (``busy`` then).
        Ours also: ``current_task_age`` (seconds its task has run), ``held_ahead`` (jobs it
        holds ahead) and ``rss_bytes`` (its memory).
        """
        now = time.monotonic()
        return [
            {
                "worker_id": worker.id,
                "pid": worker.pid,
                "status": DISPATCHERD_STATUS[worker.status],
                "state": worker.status.value,
                "finished_count": worker.tasks_done,
                "current_task": worker.job.task if worker.job else None,
                "current_task_uuid": worker.job.uuid if worker.job else None,
                "current_task_age": round(now - worker.job_since, 3) if worker.job else None,
                "active_cancel": worker.cancelling is not None,
                "age": round(now - worker.created, 3),
                "held_ahead": [job.uuid for job in worker.pending_ahead],
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

    def pool(self) -> dict[str, Any]:
        """``next_worker_id``, ``worker_ct``, ``running_ct`` and ``active_task_ct``."""
        workers = self._supervisor.workers
        running = sum(1 for worker in workers if worker.job is not None)
        ahead = sum(len(worker.pending_ahead) for worker in workers)
        return {
            "next_worker_id": self._supervisor.next_worker_id,
            "worker_ct": sum(1 for worker in workers if worker.status in LIVE),
            "running_ct": running,
            "active_task_ct": running + ahead + self._scheduler.queued,
            "usage": self.usage(),
        }

    def usage(self) -> dict[str, Any]:
        """Give dispatcherd's ``pool.usage`` from the workers' idle times.

        For each pool size N from 1 to the live workers' count: ``"blocked"`` while N
        workers are needed now (N is at most the workers running a task plus the jobs
        queued, or a worker still starting makes the Nth), else the seconds since the pool
        last needed N (since the worker that made the Nth became idle: the (N - busy)th
        most recently idle). ``count`` is the number of sizes known, ``top5`` the five
        largest, ``near_worker_ct`` those within two of the live workers' count
        (``"absent"`` above it). Our pool stops a worker idle ``scaledown_wait`` seconds,
        so this is a view of the same facts, not a memory of its own.
        """
        now = time.monotonic()
        live = [worker for worker in self._supervisor.workers if worker.status in LIVE]
        busy = sum(1 for worker in live if worker.job is not None)
        demand = busy + self._scheduler.queued
        idle = sorted(
            (w.idle_since for w in live if w.job is None and w.status is WorkerStatus.READY),
            reverse=True,
        )
        levels: dict[int, str | float] = {}
        for size in range(1, len(live) + 1):
            surplus = size - busy
            if size <= demand or surplus > len(idle):
                levels[size] = "blocked"
            else:
                levels[size] = round(now - idle[surplus - 1], 2)

        def entries(sizes: Iterable[int]) -> dict[int, str | float]:
            return {size: levels.get(size, "absent") for size in sizes if size > 0}

        worker_ct = len(live)
        return {
            "count": len(levels),
            "top5": entries(sorted(levels, reverse=True)[:5]),
            "near_worker_ct": entries(range(worker_ct - 2, worker_ct + 3)),
        }

    def queue_sampling(self) -> QueueSampling | None:
        """The durable queues' last sampled depth; ``None`` when nothing samples them."""
        return None if self.queue_sampler is None else self.queue_sampler.sampling()

    def chunks(self) -> dict[str, Any]:
        """Chunked messages: dispatcherd's ``status`` counters and ``partials``, and ours.

        ``total_chunks_received`` counts every chunk envelope taken, ``successful_assemblies``
        the messages joined whole; ``partials`` describes each incomplete message (see
        :meth:`~dispatcher.schema.chunks.ChunkAssembler.partials`).
        """
        assembler = self._intake.chunks
        rejected = self.stats.rejected
        return {
            "status": {
                "total_chunks_received": assembler.received,
                "successful_assemblies": assembler.assembled,
                "errored_assemblies": rejected["invalid_chunk"],
                "timed_out_assemblies": rejected["chunk_expired"],
                "active_messages": len(assembler),
                "active_bytes": assembler.memory,
                "evicted": assembler.evictions,
                "late_slices": assembler.late_slices,
            },
            "partials": assembler.partials(),
        }

    def aio_tasks(self, limit: int) -> dict[str, Any]:
        """The main process's asyncio tasks: whether each is done, and its stack (*limit* deep).

        A name two tasks share is told apart by ``#2``, ``#3``, ...
        """
        try:
            tasks = asyncio.all_tasks()
        except RuntimeError:  # no event loop runs here
            return {}
        found: dict[str, Any] = {}
        for task in sorted(tasks, key=lambda t: t.get_name()):
            name, n = task.get_name(), 1
            while name in found:
                n += 1
                name = f"{task.get_name()}#{n}"
            stack = io.StringIO()
            task.print_stack(limit=limit, file=stack)
            found[name] = {"done": task.done(), "stack": stack.getvalue()}
        return found

    def signatures(self) -> dict[str, Any]:
        """The signature settings in force and the replay guard's state."""
        return self._signatures.summary()

    def metrics_endpoint(self) -> dict[str, Any]:
        """Whether the metrics endpoint is on, and where (dispatcherd's shape, and ours)."""
        server = self.metrics_server
        if server is None:
            return {"enabled": False}
        return {
            "enabled": True,
            "status": {
                "host": server.host,
                "port": server.port,
                "ready": None,
                "http_server": {"connections_total": server.requests},
            },
            "host": server.host,
            "port": server.port,
            "url": server.url,
            "requests": server.requests,
        }

    def submit(self, message: dict[str, Any]) -> str:
        """Submit a task message made here (the ``run`` command); return its uuid."""
        return self._intake.submit(message, "control")

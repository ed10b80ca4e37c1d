"""How many workers the pool should have: pure decisions, from the workers' state and the backlog.

The rules: keep ``min_workers``; while jobs wait, add one worker per step (never while one
is still starting) up to ``max_workers``; with no backlog, stop the longest-idle worker
above ``min_workers`` once it has been idle ``scaledown_wait`` seconds; replace an idle
worker past ``max_worker_lifetime``, and a worker that has run ``max_tasks_per_worker``
tasks, between two tasks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from dispatcher.config import Pool as PoolSettings
from dispatcher.server.handle_status import LIVE, WorkerStatus


class WorkerState(Protocol):
    """What the decisions look at (a :class:`~dispatcher.server.workers.WorkerHandle`)."""

    @property
    def id(self) -> int:
        """The worker's id."""

    @property
    def status(self) -> WorkerStatus:
        """Where it is in its life."""

    @property
    def created(self) -> float:
        """When it was started (monotonic clock)."""

    @property
    def idle_since(self) -> float:
        """When it last became ready."""

    @property
    def tasks_done(self) -> int:
        """Tasks it has run."""


@dataclass(frozen=True)
class Plan:
    """What the pool should do now."""

    start: int = 0
    """Workers to start."""
    stop: list[int] = field(default_factory=list)
    """Ids of workers to stop (past their lifetime, or idle above ``min_workers``)."""


def plan(
    now: float,
    workers: Sequence[WorkerState],
    queued: int,
    settings: PoolSettings,
    max_workers: int,
) -> Plan:
    """Decide how the pool changes at time *now* with *queued* jobs waiting."""
    retired = [
        w.id for w in workers if w.status is WorkerStatus.READY and past_lifetime(w, now, settings)
    ]
    live = [w for w in workers if w.status in LIVE and w.id not in retired]
    starting = sum(1 for w in live if w.status is WorkerStatus.STARTING)
    if len(live) < settings.min_workers:
        return Plan(start=settings.min_workers - len(live), stop=retired)
    if queued and len(live) < max_workers and not starting:
        return Plan(start=1, stop=retired)
    if not queued and len(live) > settings.min_workers:
        idle = [w for w in live if w.status is WorkerStatus.READY]
        if idle:
            longest = min(idle, key=lambda w: w.idle_since)
            if now - longest.idle_since >= settings.scaledown_wait:
                return Plan(stop=[*retired, longest.id])
    return Plan(stop=retired)


def past_lifetime(worker: WorkerState, now: float, settings: PoolSettings) -> bool:
    """Whether the worker has lived ``max_worker_lifetime`` seconds."""
    lifetime = settings.max_worker_lifetime
    return lifetime is not None and now - worker.created >= lifetime


def retire_reason(worker: WorkerState, now: float, settings: PoolSettings) -> str | None:
    """Why a worker that just finished a task should be replaced, or ``None`` to keep it."""
    limit = settings.max_tasks_per_worker
    if limit is not None and worker.tasks_done >= limit:
        return f"ran {worker.tasks_done} tasks"
    if past_lifetime(worker, now, settings):
        return "reached its maximum lifetime"
    return None

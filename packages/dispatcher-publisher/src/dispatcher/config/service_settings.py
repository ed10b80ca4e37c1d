"""The settings of the config's ``service`` section: the pool, the metrics endpoint, the limits.

Part of :class:`~dispatcher.config.settings.Settings`; every default here is also written in
``config.schema.json`` (for the docs), as for the other settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from dispatcher.schema import LogFormat
from dispatcher.schema.chunks import MAX_PARTIAL_BYTES, MAX_PARTIAL_MESSAGES


@dataclass(frozen=True)
class Pool:
    """``service.pool``: the worker subprocesses."""

    min_workers: int = 1
    max_workers: int | None = None
    scaledown_wait: float = 15
    max_worker_lifetime: float | None = 14400
    max_tasks_per_worker: int | None = None
    hold_ahead_below: float = 0.002
    """A busy worker is sent the next jobs ahead while a backlog exists only when its task
    has lately run for less than this many seconds; ``0`` never sends jobs ahead."""


@dataclass(frozen=True)
class Metrics:
    """``service.metrics``: the Prometheus endpoint."""

    host: str = "127.0.0.1"
    port: int = 8070


@dataclass(frozen=True)
class Limits:
    """``service.limits``: bounds on what publishers can make the service hold."""

    max_partial_messages: int = MAX_PARTIAL_MESSAGES
    """Incomplete chunked messages held; beyond it the oldest is evicted."""
    max_partial_bytes: int = MAX_PARTIAL_BYTES
    """Memory held by the slices of incomplete chunked messages; beyond it the oldest go."""
    max_delayed: int = 100_000
    """Tasks waiting for their delay; beyond it the newest is refused."""
    max_blocked: int = 100_000
    """Tasks held back by ``on_duplicate``; beyond it the newest is refused."""
    max_queued: int = 1_000_000
    """Tasks waiting for a free worker; beyond it the newest is refused."""
    max_held_bytes: int = 256 * 1024 * 1024
    """Message bytes held in each of three places, counted apart: the jobs queued, delayed or
    blocked; those waiting for the first worker; the large ones being decoded with those held
    behind them (up to about three times this in all)."""


@dataclass(frozen=True)
class ServiceControl:
    """``service.control``: how the service answers control commands."""

    cancel_without_filter: Literal["refuse", "all"] = "refuse"
    """What ``cancel`` with no filter does: ``refuse`` (an error reply), or cancel ``all``
    tasks, as dispatcherd does."""


TaskLog = Literal["end", "start_and_end", "off"]
"""``service.task_log``: which per-task lines the service logs at INFO."""


@dataclass(frozen=True)
class Service:
    """``service``: the service process."""

    node_id: str | None = None
    pool: Pool = field(default_factory=Pool)
    shutdown_grace: float = 30
    cancel_grace: float = 5
    chunk_expiry: float = 1800
    task_log: TaskLog = "end"
    """Per-task INFO lines: at each task's ``end``, at its ``start_and_end``, or ``off``."""
    log_format: LogFormat = "text"
    """How ``dispatcher-standalone`` and ``rundispatcher`` write the log (``text`` lines, or
    ``json`` objects), and the workers their own lines, whatever starts the service."""
    metrics: Metrics | None = None
    limits: Limits = field(default_factory=Limits)
    control: ServiceControl = field(default_factory=ServiceControl)

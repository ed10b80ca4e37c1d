"""Counters of what the service has done, for logs, control replies and metrics."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class ServiceStats:
    """Running totals since the service started."""

    received: int = 0
    """Messages received (a chunked message counts once, when complete)."""
    rejected: Counter[str] = field(default_factory=Counter)
    """Messages rejected, by reason (``not_json``, ``unknown_task``, ...)."""
    finished: Counter[str] = field(default_factory=Counter)
    """Tasks finished, by outcome (``ok``, ``error``, ``timeout``, ``cancelled``, ``killed``,
    ``worker_lost``)."""
    control: int = 0
    """Control commands run (from brokers; bound tasks' calls are not counted)."""
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

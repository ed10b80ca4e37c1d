"""How a task run can end: the outcomes a service reports (control replies, metrics, logs)."""

from __future__ import annotations

import enum


class Outcome(enum.StrEnum):
    """The end of one task run. The values are the words used on the wire and in metrics."""

    OK = "ok"
    """The task returned (or raised ``DispatcherExit``, which also ends its worker)."""
    ERROR = "error"
    """The task raised an exception."""
    CANCELLED = "cancelled"
    """A ``cancel`` command stopped it."""
    TIMEOUT = "timeout"
    """It ran past its ``timeout`` and was cancelled."""
    KILLED = "killed"
    """It ignored its timeout's cancel and its worker was stopped, or it outlasted the shutdown."""
    WORKER_LOST = "worker_lost"
    """Its worker died while running it."""
    MEMORY_EXCEEDED = "memory_exceeded"
    """Its worker passed ``worker.max_memory`` and was killed."""

"""The statuses of a worker handle, and what a handle needs of its process.

Kept apart from :mod:`~dispatcher.server.workers`, so that what only reads a worker's
status (the control plane's window, the scaling decision) does not import the handle.
"""

from __future__ import annotations

import enum
from typing import Final, Protocol


class WorkerStatus(enum.Enum):
    """Where a worker is in its life."""

    STARTING = "starting"
    READY = "ready"
    BUSY = "busy"
    STOPPING = "stopping"
    EXITED = "exited"


LIVE: Final = frozenset({WorkerStatus.STARTING, WorkerStatus.READY, WorkerStatus.BUSY})
"""Statuses of workers that count towards the pool's size."""


class Process(Protocol):
    """What a handle needs of its process.

    In the service, a :class:`~dispatcher.server.launched_process.WorkerProcess`.
    """

    pid: int

    def send(self, line: bytes) -> bool:
        """Write a line; ``False`` when part of it waits for :meth:`flush`."""

    async def flush(self) -> None:
        """Write what waits."""

    def signal(self, signum: int) -> None:
        """Send a signal."""

    def kill(self) -> None:
        """SIGKILL."""

    def terminate(self) -> None:
        """SIGTERM."""

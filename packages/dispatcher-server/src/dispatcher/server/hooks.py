"""Worker hooks: a class named by ``worker.class`` whose methods run in every worker."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class BaseWorker:
    """Subclass this and name your class in ``worker.class`` to run code in each worker.

    Every hook is optional. A hook that raises is logged, and the worker carries on.
    """

    def __init__(self, worker_id: int) -> None:
        self.worker_id = worker_id
        """This worker's id in the pool."""

    def on_start(self) -> None:
        """Runs once when the worker starts, before it takes work."""

    def pre_task(self, message: Mapping[str, Any]) -> None:
        """Runs before each task, with its task message."""

    def post_task(self, outcome: Mapping[str, Any]) -> None:
        """Runs after each task, with its outcome (``outcome``, ``uuid``, times, error)."""

    def on_idle(self) -> None:
        """Runs after ``worker.idle_timeout`` seconds without work (then again, as long as idle)."""

    def on_shutdown(self) -> None:
        """Runs once when the worker exits normally."""

"""Worker classes that ``worker.class`` cannot use: the service must refuse each, saying why.

:class:`AppWorker` is shaped as an application's subclass of dispatcherd's ``TaskWorker``
(as AWX's is), the base class made here with dispatcherd's module name, so that no
dispatcherd need be installed; its constructor takes dispatcherd's queues, as the real one's
does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dispatcher.server import BaseWorker


class TaskWorker:
    """As dispatcherd's: made with the worker's id and its two queues."""

    def __init__(self, worker_id: int, message_queue: Any, finished_queue: Any) -> None:
        self.worker_id = worker_id


TaskWorker.__module__ = "dispatcherd.worker.task"


class AppWorker(TaskWorker):
    """An application's hooks, still on dispatcherd's base class."""

    def pre_task(self, message: Mapping[str, Any]) -> None:
        pass


class PlainWorker:
    """Hooks on no base class at all (made with the worker's id, as ours are)."""

    def __init__(self, worker_id: int) -> None:
        self.worker_id = worker_id


class BrokenWorker(BaseWorker):
    """A subclass of ours whose constructor fails."""

    def __init__(self, worker_id: int) -> None:
        super().__init__(worker_id)
        raise RuntimeError("tracing backend unreachable (simulated)")


NOT_A_CLASS = "worker"

"""A worker's start: import the task modules and ``worker.class``, then say what it runs.

The fork server imported the task modules when it started, so that importing them here is
quick; one may fail all the same (a fork server replaced imports them afresh). A failure is
reported as the start-up checks report it (:class:`StartFailed`). The first event a worker
sends once started, ``ready`` (:func:`ready_event`), names the tasks it registers.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from dispatcher.publish import registry
from dispatcher.server.hooks import BaseWorker
from dispatcher.server.task_imports import failure


def ready_event() -> dict[str, Any]:
    """The first event: this worker's pid, its registered tasks and their fixed queues.

    Also the ``max_attempts`` and the ``timeout`` of the tasks that set one.
    """
    names = sorted(registry.names())
    queues, attempts, timeouts = {}, {}, {}
    for name in names:
        entry = registry.get(name)
        if entry is None:
            continue
        if isinstance(entry.queue, str):
            queues[name] = entry.queue
        if entry.max_attempts is not None:
            attempts[name] = entry.max_attempts
        if entry.timeout is not None:
            timeouts[name] = entry.timeout
    return {
        "event": "ready",
        "pid": os.getpid(),
        "tasks": names,
        "queues": queues,
        "max_attempts": attempts,
        "timeouts": timeouts,
    }


class StartFailed(Exception):
    """A task module, or the module of ``worker.class``, cannot be imported."""

    def __init__(self, report: dict[str, Any]) -> None:
        super().__init__(report.get("error"))
        self.report = report
        """What :func:`~dispatcher.server.task_imports.failure` says, and ``field``."""


def import_task_code(
    modules: tuple[str, ...], hooks_class: str | None, worker_id: int
) -> BaseWorker:
    """Import the task *modules* and the module of ``worker.class``; return the hooks.

    *hooks_class* is ``worker.class``, if set; the hooks are made for worker *worker_id*.

    :raises StartFailed: when one cannot be imported (the fork server imported them when it
        started, but one may fail since: a fork server replaced imports them afresh).
    """
    for module in modules:
        try:
            importlib.import_module(module)
        except BaseException as exc:
            raise StartFailed({**failure(module, exc), "field": "tasks.modules"}) from None
    path = hooks_class
    if path is not None:
        module = path.rpartition(".")[0]
        try:
            importlib.import_module(module)
        except BaseException as exc:
            report = {**failure(module, exc), "field": "worker.class", "name": path}
            raise StartFailed(report) from None
    return load_hooks(path, worker_id)


def load_hooks(path: str | None, worker_id: int) -> BaseWorker:
    """The hooks of worker *worker_id*: an instance of the class at *path* (``worker.class``).

    :class:`~dispatcher.server.hooks.BaseWorker` itself when *path* is ``None``.
    """
    if path is None:
        return BaseWorker(worker_id)
    module_name, _, class_name = path.rpartition(".")
    hooks_class = getattr(importlib.import_module(module_name), class_name, None)
    if not isinstance(hooks_class, type):
        raise TypeError(f"worker.class: {path} is not a class")
    instance = hooks_class(worker_id)
    if not isinstance(instance, BaseWorker):
        raise TypeError(f"worker.class: {path} must subclass dispatcher.server.BaseWorker")
    return instance

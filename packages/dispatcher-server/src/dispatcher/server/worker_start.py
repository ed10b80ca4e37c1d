"""A worker's start: import the task modules and ``worker.class``, then say what it runs.

The fork server imported the task modules when it started, so that importing them here is
quick; one may fail all the same (a fork server replaced imports them afresh). A failure is
reported as the start-up checks report it (:class:`StartFailed`). The first event a worker
sends once started, ``ready`` (:func:`ready_event`), names the tasks it registers.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Final

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

    :raises StartFailed: when *path* names no subclass of ``BaseWorker`` (a subclass of
        dispatcherd's ``TaskWorker`` among others), or its constructor fails.
    """
    if path is None:
        return BaseWorker(worker_id)
    module_name, _, class_name = path.rpartition(".")
    module = importlib.import_module(module_name)
    if not hasattr(module, class_name):
        raise StartFailed(
            _unusable(path, f"module {module_name!r} has no attribute {class_name!r}")
        )
    hooks_class = getattr(module, class_name)
    if not isinstance(hooks_class, type):
        kind = type(hooks_class).__name__
        raise StartFailed(_unusable(path, f"{path} is not a class (a {kind})"))
    if not issubclass(hooks_class, BaseWorker):
        error = f"{path} does not subclass dispatcher.server.BaseWorker"
        raise StartFailed(_unusable(path, error, _base_class_hint(hooks_class)))
    try:
        return hooks_class(worker_id)
    except Exception as exc:  # the application's code: said as an import error is
        raise StartFailed({**failure(module_name, exc), **_unusable(path, "")}) from None


HOOK_NAMES: Final = ("on_start", "pre_task", "post_task", "on_idle", "on_shutdown")
"""The hooks of :class:`~dispatcher.server.hooks.BaseWorker` (dispatcherd's have these names)."""


def _unusable(path: str, error: str, hint: str | None = None) -> dict[str, Any]:
    """The report of ``worker.class`` *path*, imported but unusable: *error* says why."""
    report: dict[str, Any] = {"field": "worker.class", "name": path, "unusable": True}
    if error:
        report["error"] = error
    if hint:
        report["hint"] = hint
    return report


def _base_class_hint(hooks_class: type) -> str:
    """What to do with *hooks_class*, which is no ``BaseWorker``: port it, or subclass ours."""
    hooks = ", ".join(HOOK_NAMES[:-1]) + f" and {HOOK_NAMES[-1]}"
    for base in hooks_class.__mro__[1:]:
        if base.__module__.partition(".")[0] == "dispatcherd":
            return (
                f"it subclasses dispatcherd's {base.__module__}.{base.__qualname__}, whose "
                f"workers run another loop: move its hooks ({', '.join(HOOK_NAMES)}) to a "
                "subclass of dispatcher.server.BaseWorker (its other methods, such as "
                "run_callable, are never called here: wrap each task in pre_task and "
                "post_task instead)"
            )
    return f"subclass dispatcher.server.BaseWorker, whose hooks are {hooks}"

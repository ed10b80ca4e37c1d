"""Importing the task modules once at start-up, and saying plainly why that failed.

The fork server imports ``tasks.modules`` before it forks any worker and reports the result
to the service (:func:`import_report`), which refuses to start, before any broker listens,
when a module cannot be imported or the modules register no task (:func:`refusal`). The
report is one JSON object; an import error in it is already cut down to what helps: the
module, the exception, the line of the user's code that raised it, and where Python looked.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import traceback
from collections.abc import Mapping, Sequence
from typing import Any, Final

from dispatcher.publish import registry
from dispatcher.server.dispatcherd_tasks import adopt_dispatcherd_tasks

MAX_ERROR_CHARS: Final = 2000
"""Longest exception message kept in a report (it travels in one socket message)."""

MAX_PATH_ENTRIES: Final = 12
"""``sys.path`` entries a report lists (the first ones)."""

_THIS_FILE: Final = os.path.abspath(__file__)
_IMPORTLIB_DIR: Final = os.path.dirname(os.path.abspath(importlib.__file__ or ""))


def import_report(modules: Sequence[str]) -> dict[str, Any]:
    """Import *modules* in order, then adopt dispatcherd's tasks; say how it went.

    Returns ``{"ok": True, "task_count": N}``, or ``{"ok": False, ...}`` (see
    :func:`failure`) at the first module that fails.
    """
    for module in modules:
        try:
            importlib.import_module(module)
        except BaseException as exc:  # whatever it is, the service must hear of it
            return failure(module, exc)
    with contextlib.suppress(Exception):  # it logs its own problems
        adopt_dispatcherd_tasks()
    return {"ok": True, "task_count": len(registry.names())}


def failure(module: str, exc: BaseException) -> dict[str, Any]:
    """The report of *module* failing to import with *exc*.

    Its keys: ``module``, ``error`` (``Type: message``), ``location`` (``file:line`` of the
    line that raised it outside the import machinery, or ``None``), ``import_error``
    (whether it is an :class:`ImportError`), ``cwd`` and ``sys_path``.
    """
    message = str(exc)
    if len(message) > MAX_ERROR_CHARS:
        message = message[:MAX_ERROR_CHARS] + "..."
    error = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return {
        "ok": False,
        "module": module,
        "error": error,
        "location": _location(exc),
        "import_error": isinstance(exc, ImportError),
        "cwd": os.getcwd(),
        "sys_path": sys.path[:MAX_PATH_ENTRIES],
        "more_path_entries": max(0, len(sys.path) - MAX_PATH_ENTRIES),
    }


def _location(exc: BaseException) -> str | None:
    """``file:line`` where *exc* was raised in the user's code (not in importlib's)."""
    if isinstance(exc, SyntaxError) and exc.filename and exc.lineno:
        return f"{exc.filename}:{exc.lineno}"
    found = None
    for frame in traceback.extract_tb(exc.__traceback__):
        name = frame.filename
        if name.startswith("<frozen ") or name == _THIS_FILE:
            continue
        if os.path.dirname(os.path.abspath(name)) == _IMPORTLIB_DIR:
            continue
        found = f"{name}:{frame.lineno}"
    return found


def refusal(report: Mapping[str, Any] | None, modules: Sequence[str], source: str) -> str | None:
    """Why the service must not start after *report* (``None``: the fork server ended first).

    ``None`` when the modules imported and registered at least one task. The text's first
    line says what went wrong; the lines after it help to fix it.
    """
    if report is None:
        return "the fork server ended before it had imported tasks.modules"
    if report.get("ok"):
        if report.get("task_count"):
            return None
        return (
            f"tasks.modules in {source} ({', '.join(modules)}) register no task\n"
            "decorate the functions to run with @task (from dispatcher.publish), or "
            "dispatcherd's @task, in those modules or in modules they import"
        )
    module = report.get("module")
    lines = [f"cannot import task module {module!r} (tasks.modules in {source})"]
    lines.append(f"error: {report.get('error')}")
    if report.get("location"):
        lines.append(f"at: {report['location']}")
    if report.get("import_error"):
        path = [str(entry) for entry in report.get("sys_path") or ()]
        cwd = str(report.get("cwd"))
        more = int(report.get("more_path_entries") or 0)
        on_path = "on" if cwd in path or "" in path else "not on"
        lines.append(f"working directory: {cwd} ({on_path} sys.path)")
        lines.append(
            "sys.path: "
            + ", ".join(entry or "(working directory)" for entry in path)
            + (f" and {more} more" if more else "")
        )
        example = "/path/to/project" if on_path == "on" else cwd
        lines.append(
            "hint: Python looks for task modules on sys.path; put the folder that holds the "
            f"module's top-level package on PYTHONPATH (e.g. PYTHONPATH={example}), or "
            "install the project into the service's environment"
        )
    return "\n".join(lines)


def missing_modules(modules: Sequence[str], source: str) -> str | None:
    """Why the service must not start with no task module configured (``None``: some are)."""
    if modules:
        return None
    return (
        f"{source}: tasks.modules: no task module configured; list the modules that define "
        "your tasks, e.g. tasks: {modules: [myapp.tasks]}"
    )

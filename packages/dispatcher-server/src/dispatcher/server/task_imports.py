"""Importing the task modules once at start-up, and saying plainly why that failed.

The fork server imports ``tasks.modules`` before it forks any worker and reports the result
to the service (:func:`import_report`), which refuses to start, before any broker listens,
when a module cannot be imported or the modules register no task (:func:`refusal`). The
report is one JSON object, of any size (it names every registered task); an import error in
it is already cut down to what helps: the module, the exception, the line of the user's code
that raised it, and where Python looked.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import site
import sys
import traceback
from collections.abc import Iterable, Mapping, Sequence
from importlib.machinery import PathFinder
from typing import Any, Final

from dispatcher.publish import registry
from dispatcher.server.dispatcherd_tasks import adopt_dispatcherd_tasks

MAX_ERROR_CHARS: Final = 2000
"""Longest exception message kept in a report (what helps is at its start)."""

MAX_PATH_ENTRIES: Final = 12
"""``sys.path`` entries a report lists (the first ones)."""

MAX_PATH_CHARS: Final = 500
"""Longest path (working directory, ``sys.path`` entry, file) kept in a report."""

_THIS_FILE: Final = os.path.abspath(__file__)
_IMPORTLIB_DIR: Final = os.path.dirname(os.path.abspath(importlib.__file__ or ""))


def import_report(modules: Sequence[str]) -> dict[str, Any]:
    """Import *modules* in order, then adopt dispatcherd's tasks; say how it went.

    Returns ``{"ok": True, "task_count": N, "task_names": [...], "files": {...}}``, or
    ``{"ok": False, ...}`` (see :func:`failure`) at the first module that fails.
    """
    for module in modules:
        try:
            importlib.import_module(module)
        except BaseException as exc:  # whatever it is, the service must hear of it
            try:
                return failure(module, exc)
            except BaseException:  # not even that: say what can be said for sure
                return {"ok": False, "module": module, "error": _type_name(exc)}
    with contextlib.suppress(Exception):  # it logs its own problems
        adopt_dispatcherd_tasks()
    names = sorted(registry.names())
    return {"ok": True, "task_count": len(names), "task_names": names, "files": _files(modules)}


def failure(module: str, exc: BaseException) -> dict[str, Any]:
    """The report of *module* failing to import with *exc*.

    Its keys: ``module``, ``error`` (``Type: message``), ``location`` (``file:line`` of the
    line of the user's code that raised it, or ``None``), ``raised_in`` (``file:line``
    where it was raised, when that is in a library rather than there), ``import_error``
    (whether it is an :class:`ImportError`), ``cwd`` and ``sys_path``.
    """
    message = _message(exc)
    if len(message) > MAX_ERROR_CHARS:
        message = message[:MAX_ERROR_CHARS] + "..."
    name = _type_name(exc)
    error = f"{name}: {message}" if message else name
    location, raised_in = _locations(module, exc)
    return {
        "ok": False,
        "module": module,
        "error": error,
        "location": location,
        "raised_in": raised_in if raised_in != location else None,
        "import_error": isinstance(exc, ImportError),
        "missing": _short(str(exc.name)) if isinstance(exc, ModuleNotFoundError) else None,
        "cwd": _short(os.getcwd()),
        "sys_path": [_short(str(entry)) for entry in sys.path[:MAX_PATH_ENTRIES]],
        "more_path_entries": max(0, len(sys.path) - MAX_PATH_ENTRIES),
    }


def _type_name(exc: BaseException) -> str:
    return str(getattr(type(exc), "__name__", "exception"))[:MAX_ERROR_CHARS]


def _message(exc: BaseException) -> str:
    """``str(exc)``, or what is known when that fails (an exception's ``__str__`` is code)."""
    try:
        return str(exc)
    except BaseException as failed:
        return f"(its message cannot be shown: str() raised {_type_name(failed)})"


def _short(path: str) -> str:
    return path if len(path) <= MAX_PATH_CHARS else path[:MAX_PATH_CHARS] + "..."


def _files(modules: Sequence[str]) -> dict[str, str]:
    """Where each imported module was loaded from (a module named like another shows)."""
    found = {}
    for module in modules:
        loaded = sys.modules.get(module)
        origin = getattr(loaded, "__file__", None) if loaded is not None else None
        found[module] = _short(str(origin)) if origin else "(no file)"
    return found


def _locations(module: str, exc: BaseException) -> tuple[str | None, str | None]:
    """``(where in the user's code, where raised)`` of *exc*, each ``file:line`` or ``None``.

    The user's code is every file but the import machinery's, the standard library's,
    installed libraries' and this project's own, except that the package being imported
    counts as the user's even when it is installed.
    """
    if isinstance(exc, SyntaxError) and exc.filename and exc.lineno:
        where = f"{exc.filename}:{exc.lineno}"
        return where, where
    user = raised = None
    own = _own_folders(module)
    libraries = _library_folders()
    ours = _dispatcher_folders()
    for frame in traceback.extract_tb(exc.__traceback__):
        name = frame.filename
        if name.startswith("<frozen ") or name == _THIS_FILE:
            continue
        path = os.path.abspath(name)
        if os.path.dirname(path) == _IMPORTLIB_DIR:
            continue
        if user is None and raised is None and _under(path, ours) and not _under(path, own):
            continue  # the service's own call of the import (worker.class): none of the user's
        raised = f"{name}:{frame.lineno}"
        if _under(path, own) or not _under(path, libraries):
            user = raised
    return user or raised, raised


def _under(path: str, folders: Iterable[str]) -> bool:
    return any(path == folder or path.startswith(folder + os.sep) for folder in folders)


def _library_folders() -> list[str]:
    """The standard library, the installed libraries, and this project's own packages."""
    import sysconfig  # only when an import failed: its data is large, and seldom needed

    paths = sysconfig.get_paths()
    folders = {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths}
    with contextlib.suppress(AttributeError):
        folders.update(site.getsitepackages())
    folders.update(_dispatcher_folders())
    return [os.path.abspath(folder) for folder in folders if folder]


def _dispatcher_folders() -> list[str]:
    """The folders of this project's own packages (the ``dispatcher`` namespace)."""
    namespace = sys.modules.get("dispatcher")
    return [os.path.abspath(folder) for folder in getattr(namespace, "__path__", ()) if folder]


def _own_folders(module: str) -> list[str]:
    """The folder or file of *module*'s top-level package, found without importing it."""
    with contextlib.suppress(Exception):
        spec = PathFinder.find_spec(module.partition(".")[0], sys.path)
        if spec is not None:
            if spec.submodule_search_locations:
                return [os.path.abspath(folder) for folder in spec.submodule_search_locations]
            if spec.origin:
                return [os.path.abspath(spec.origin)]
    return []


def refusal(report: Mapping[str, Any] | None, modules: Sequence[str], source: str) -> str | None:
    """Why the service must not start after *report* (``None``: the fork server ended first).

    ``None`` when the modules imported and registered at least one task. The text's first
    line says what went wrong; the lines after it help to fix it.
    """
    if report is None or "ended" in report:
        return ended_early(None if report is None else report.get("ended"))
    if report.get("ok"):
        if report.get("task_count"):
            return None
        files = report.get("files") or {}
        return "\n".join(
            [
                f"tasks.modules in {source} ({', '.join(modules)}) register no task",
                *(f"{module} was loaded from {files[module]}" for module in files),
                "decorate the functions to run with @task (from dispatcher.publish), or "
                "dispatcherd's @task, in those modules or in modules they import",
            ]
        )
    module = report.get("module")
    if report.get("unusable"):
        lines = [f"worker.class {report.get('name')!r} cannot be used (worker.class in {source})"]
    elif report.get("field") == "worker.class":
        lines = [f"cannot import worker.class {report.get('name')!r} (worker.class in {source})"]
    else:
        lines = [f"cannot import task module {module!r} (tasks.modules in {source})"]
    lines.append(f"error: {report.get('error')}")
    if report.get("location"):
        lines.append(f"at: {report['location']}")
    if report.get("raised_in"):
        lines.append(f"raised in: {report['raised_in']}")
    if report.get("hint"):
        lines.append(f"hint: {report['hint']}")
    if report.get("import_error"):
        lines += _import_hints(report, str(module), source)
    return "\n".join(lines)


def _import_hints(report: Mapping[str, Any], module: str, source: str) -> list[str]:
    """Where Python looked for the module, and what to do about it (*source*: the config).

    The module is a task module, or the module of ``worker.class`` (the report's ``field``).
    """
    field = str(report.get("field") or "tasks.modules")
    named = "task module" if field == "tasks.modules" else "module of worker.class"
    looked_for = "task modules" if field == "tasks.modules" else "the module of worker.class"
    path = [str(entry) for entry in report.get("sys_path") or ()]
    cwd = str(report.get("cwd"))
    more = int(report.get("more_path_entries") or 0)
    on_path = "on" if cwd in path or "" in path else "not on"
    lines = []
    if "cwd" in report:  # (not in the short report of an exception that failed its own report)
        lines.append(f"working directory: {cwd} ({on_path} sys.path)")
        lines.append(
            "sys.path: "
            + ", ".join(entry or "(working directory)" for entry in path)
            + (f" and {more} more" if more else "")
        )
    missing = str(report.get("missing") or "")
    if module.endswith(".py"):
        lines.append(
            "hint: tasks.modules lists module names, not file names: write "
            f"{module.removesuffix('.py')!r} for {module!r}"
        )
    elif "." in missing and f"{module}.".startswith(f"{missing}."):
        parent, _, name = missing.rpartition(".")  # (Python names the first part not found)
        lines.append(
            f"hint: the package {parent!r} was found, but holds no module {name!r}: check "
            f"the name in {field}"
        )
    elif missing and f"{module}.".startswith(f"{missing}."):  # the task module, or its package
        beside = _beside_config(missing, source)
        if beside is not None:
            lines.append(
                f"hint: {beside} is in the config file's folder, which is not on sys.path: "
                f"put that folder on PYTHONPATH (e.g. PYTHONPATH={os.path.dirname(beside)})"
            )
            return lines
        example = cwd if "cwd" in report and on_path == "not on" else "/path/to/project"
        lines.append(
            f"hint: Python looks for {looked_for} on sys.path; put the folder that holds the "
            f"module's top-level package on PYTHONPATH (e.g. PYTHONPATH={example}), or "
            "install the project into the service's environment"
        )
    elif missing and missing.partition(".")[0] == module.partition(".")[0]:
        lines.append(
            f"hint: {missing!r}, imported by the {named}, is not in its package: a file "
            "missing, or a misspelt import"
        )
    elif missing:
        lines.append(
            f"hint: the {named} imports {missing!r}, which is not installed where the "
            "service runs: install it into the service's environment (or, if it is part of "
            "your project, put its folder on PYTHONPATH)"
        )
    return lines


def _beside_config(name: str, source: str) -> str | None:
    """The file ``name.py`` or package folder ``name/`` next to the config file *source*."""
    if not os.path.isfile(source):  # (a config given as a dict, or a file gone since)
        return None
    folder = os.path.dirname(os.path.abspath(source))
    for candidate in (os.path.join(folder, f"{name}.py"), os.path.join(folder, name)):
        if os.path.isfile(candidate) or os.path.isdir(candidate):
            return _short(candidate)
    return None


def unregistered_producers(
    report: Mapping[str, Any] | None, producers: Mapping[str, Iterable[str]], source: str
) -> str | None:
    """Why the service must not start: producer entries that name no registered task.

    *producers* maps each section of ``producers`` (``scheduled``, ``on_start``) to the
    task names it lists. ``None`` when each is registered, or when *report* lists no
    registered names (a fork server's report always does).
    """
    names = (report or {}).get("task_names")
    if not isinstance(names, list):
        return None
    registered = set(names)
    lines = [
        f"producers.{section}[{task!r}]: no such registered task{_did_you_mean(task, names)}"
        for section, tasks in producers.items()
        for task in tasks
        if task not in registered
    ]
    if not lines:
        return None
    lines.append(
        f"hint: in {source}, name each task by its registered name: its module and function "
        "(myapp.tasks.send_mail), or the name given to @task(name=...)"
    )
    return "\n".join(lines)


def _did_you_mean(task: str, names: Sequence[str]) -> str:
    """``"; did you mean 'x'?"`` for the registered name closest to *task*, or ``""``."""
    from dispatcher.publish.mistakes import close_task_name  # only when a name is wrong

    close = close_task_name(task, names)
    if close is None:  # a short name, say "hello" for "myapp.tasks.hello"
        same = [name for name in names if name.rpartition(".")[2] == task.rpartition(".")[2]]
        close = same[0] if len(same) == 1 else None
    return "" if close is None else f"; did you mean {close!r}?"


def ended_early(status: object) -> str:
    """Why the service cannot start when the fork server ended with *status* before its report.

    Nothing in Python can catch a module that ends the process as it is imported.
    """
    how = "" if status is None else f" (exit status {status})"
    return (
        f"the fork server ended{how} while it imported tasks.modules, before it could report\n"
        "a task module (or code it imports) ended the process: os._exit(), a crash in C "
        "code, or a kill (the out-of-memory killer?); import the modules in a Python shell "
        "to see which"
    )


def missing_modules(modules: Sequence[str], source: str) -> str | None:
    """Why the service must not start with no task module configured (``None``: some are)."""
    if modules:
        return None
    return (
        f"{source}: tasks.modules: no task module configured; list the modules that define "
        "your tasks, e.g. tasks: {modules: [myapp.tasks]}"
    )

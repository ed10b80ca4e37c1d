"""Restart the workers when a task module's source changes (``dispatcher-standalone --reload``).

For development. The folders holding the configured task modules are watched with
watchfiles (the optional extra ``dispatcher-server[reload]``): a package's own folder, or
the folder of a module file, with their subfolders. A change to a ``.py`` file there (not in
``__pycache__``, not an editor's temporary or lock file; a burst of changes counts once) has
the pool reload (:meth:`~dispatcher.server.pool_reload.Reloader.reload`): a new fork server
imports the modules afresh and the workers are replaced by its own, the queued jobs waiting
for them. When the new code cannot be imported, the old workers carry on and the next change
is tried again.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from importlib.machinery import ModuleSpec, PathFinder
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol

from dispatcher.server.log_records import get_logger

if TYPE_CHECKING:
    import anyio
    from watchfiles import Change

    from dispatcher.server.pool_reload import Reloaded

logger = get_logger("dispatcher.reload")

MISSING_WATCHFILES: Final = '--reload needs watchfiles: pip install "dispatcher-server[reload]"'
"""What ``--reload`` says when watchfiles is not installed."""

STEP_MS: Final = 100
"""A burst of changes ends after this many milliseconds without another one."""

FOUND_AGAIN_POLL: Final = 0.5
"""Seconds between looks for a watched folder that was deleted or moved away."""


class ReloadablePool(Protocol):
    """What the watch reloads (a :class:`~dispatcher.server.supervisor.Supervisor`)."""

    async def reload(self) -> Reloaded:
        """Replace every worker by one running the task modules as they are now."""


def missing_watchfiles() -> str | None:
    """The line saying what to install when watchfiles is missing; ``None`` when it is there."""
    return MISSING_WATCHFILES if importlib.util.find_spec("watchfiles") is None else None


def watched_folders(modules: Sequence[str], path: Sequence[str]) -> list[Path]:
    """The folders holding *modules*, found on *path* without importing anything.

    A package's own folder(s); the folder of a module file. Folders inside another one
    listed are left out (the watch covers subfolders).
    """
    found: set[Path] = set()
    for module in modules:
        found.update(_source_folders(module, path))
    return sorted(f for f in found if not any(p in f.parents for p in found))


def _source_folders(module: str, path: Sequence[str]) -> list[Path]:
    spec: ModuleSpec | None = None
    search = list(path)
    parts = module.split(".")
    for depth in range(1, len(parts) + 1):
        spec = PathFinder.find_spec(".".join(parts[:depth]), search)
        if spec is None:
            return []
        if depth < len(parts):
            if spec.submodule_search_locations is None:
                return []
            search = list(spec.submodule_search_locations)
    assert spec is not None
    if spec.submodule_search_locations:
        return [Path(folder).resolve() for folder in spec.submodule_search_locations]
    if spec.origin and os.path.isfile(spec.origin):
        return [Path(spec.origin).resolve().parent]
    return []


def is_source(change: Change, path: str) -> bool:
    """Whether a change to *path* is one to reload for: a ``.py`` file, not a temporary one."""
    name = os.path.basename(path)
    if not name.endswith(".py") or name.startswith((".", "#", "~")):
        return False  # editors' lock, swap and backup files
    return _default_filter()(change, path)


@functools.cache
def _default_filter() -> Callable[[Change, str], bool]:
    """The default filter of watchfiles: leaves out ``__pycache__``, ``.git``, ``.venv``..."""
    from watchfiles import DefaultFilter

    return DefaultFilter()


def forget_bytecode(paths: Iterable[str]) -> None:
    """Delete the cached bytecode of changed sources.

    Python trusts a cached file whose source has the same size and modification second: an
    edit within the second of the last import could otherwise go unseen.
    """
    for path in paths:
        with contextlib.suppress(OSError, ValueError, NotImplementedError):
            os.remove(importlib.util.cache_from_source(path))


def describe(paths: Sequence[str]) -> str:
    """The changed files, for the log: the first one, and how many more."""
    more = len(paths) - 1
    return paths[0] + (f" (and {more} more)" if more > 0 else "")


async def watch_task_modules(modules: Sequence[str], supervisor: ReloadablePool) -> None:
    """Reload *supervisor*'s workers whenever the source of *modules* changes; until cancelled.

    A watched folder that is deleted or moved away (a branch switched, a folder replaced)
    is watched again once it is back, and the workers reloaded then.

    (This module imports neither anyio nor watchfiles until called: the command line checks
    for watchfiles with :func:`missing_watchfiles` before its start-up fork.)
    """
    import anyio

    get_logger("watchfiles").setLevel(logging.WARNING)  # "1 change detected": ours say more
    folders = watched_folders(modules, sys.path)
    if not folders:
        logger.warning("--reload: the source of %s was not found: nothing is watched", modules)
        return
    async with anyio.create_task_group() as group:
        stop = anyio.Event()
        group.start_soon(_set_when_cancelled, stop, name="reload-stop")
        while True:
            logger.info("reload: watching %s", ", ".join(str(folder) for folder in folders))
            gone = await _watch(folders, supervisor, stop)
            if gone is None:
                break
            logger.warning(
                "reload: %s was deleted or moved away: watched again once it is back", gone
            )
            folders = await _found_again(modules)
            logger.info("reloading: %s is back", gone)
            if not await _reload(supervisor):
                break
        group.cancel_scope.cancel()


async def _watch(
    folders: Sequence[Path], supervisor: ReloadablePool, stop: anyio.Event
) -> Path | None:
    """Reload at each change in *folders*; return one that went away (``None``: stopped)."""
    from watchfiles import awatch

    roots = {str(folder) for folder in folders}

    def wanted(change: Change, path: str) -> bool:
        return path in roots or is_source(change, path)

    async for changes in awatch(*folders, watch_filter=wanted, step=STEP_MS, stop_event=stop):
        changed = sorted({path for _, path in changes if path not in roots})
        if changed:
            forget_bytecode(changed)
            logger.info("reloading: %s changed", describe(changed))
            if not await _reload(supervisor):
                return None
        for folder in folders:
            if not folder.is_dir():
                return folder
    return None


async def _found_again(modules: Sequence[str]) -> list[Path]:
    """The folders of *modules*, once every one of them can be found (polled)."""
    import anyio

    while True:
        importlib.invalidate_caches()
        folders = watched_folders(modules, sys.path)
        if folders and all(folder.is_dir() for folder in folders):
            return folders
        await anyio.sleep(FOUND_AGAIN_POLL)


async def _reload(supervisor: ReloadablePool) -> bool:
    """Reload the workers and log how it went; ``False`` when the service is stopping."""
    outcome = await supervisor.reload()
    if outcome.shutting_down:
        return False
    if outcome.error is not None:
        logger.error(
            "reload failed, the old workers carry on (tried again at the next change): %s",
            outcome.error,
        )
    else:
        logger.info(
            "reloaded: %d workers restarted, %d tasks registered",
            outcome.restarted,
            outcome.tasks,
        )
    return True


async def _set_when_cancelled(stop: anyio.Event) -> None:
    """Set *stop* when cancelled: the watching thread then ends within a step, not seconds."""
    import anyio

    try:
        await anyio.sleep_forever()
    finally:
        stop.set()

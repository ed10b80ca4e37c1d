"""The working directory and the umask a worker's tasks start with, put back after each task.

A task that changes directory (``os.chdir()`` into a temporary folder it then removes) or
the umask (``os.umask(0o077)``, to make a private file) would leave them so for every later
task of its worker: relative paths that lead elsewhere, ``os.getcwd()`` failing, new files
made with other permissions, depending on which tasks the worker happened to run before.
After each task the worker puts both back as they were once its ``on_start`` hook had run
(which may choose them), with a warning (once per worker) naming the task and what it
changed. A directory is put back by a descriptor kept open on it, so it is the same
directory even when its path has been renamed or removed meanwhile.

Measured at about 0.5 µs a task: ``os.getcwd()`` and one ``umask`` call, which puts the
umask back as it reads it.
"""

from __future__ import annotations

import contextlib
import os
from typing import Final

from dispatcher.server.log_arguments import Phrase
from dispatcher.server.log_records import get_logger

logger = get_logger("dispatcher.worker")

_getcwd: Final = os.getcwd  # (these as imported: task code may patch os)
_umask: Final = os.umask
_fchdir: Final = os.fchdir
_chdir: Final = os.chdir
_stat: Final = os.stat
_fstat: Final = os.fstat

_DIRECTORY_FLAGS: Final = getattr(os, "O_PATH", os.O_RDONLY) | getattr(os, "O_DIRECTORY", 0)
"""How the working directory is kept open: ``O_PATH`` (Linux) needs no right to read it."""


def _where() -> str | None:
    """The working directory; ``None`` when it has no path (removed)."""
    try:
        return _getcwd()
    except OSError:
        return None


class PlaceKeeper:
    """Keeps the working directory and the umask as :meth:`keep` found them."""

    def __init__(self) -> None:
        self._directory: str | None = None
        self._directory_fd = -1
        self._umask = 0o022
        self._warned = False
        self._kept = False
        """Whether :meth:`keep` has run: nothing is put back before."""

    def keep(self) -> None:
        """Take the working directory and the umask as they are now as the ones to put back."""
        self._kept = True
        self._umask = _umask(self._umask)
        _umask(self._umask)
        self._directory = _where()
        if self._directory_fd >= 0:
            os.close(self._directory_fd)
        try:
            self._directory_fd = os.open(".", _DIRECTORY_FLAGS)  # (not inherited by children)
        except OSError:
            self._directory_fd = -1  # (put back by its path, then)

    def check(self, task: object, uuid: object) -> None:
        """Put back what task *task* (uuid *uuid*), which has just ended, changed."""
        if not self._kept:
            return
        umask = _umask(self._umask)
        where = _where()
        if umask != self._umask or where != self._directory:
            self._put_back(Phrase("task %s (uuid %s)", task, uuid), umask, where)

    def _put_back(self, who: Phrase, umask: int, where: str | None) -> None:
        changes = []
        if umask != self._umask:
            changes.append(Phrase("umask (to %s)", oct(umask)))
        if where != self._directory and not self._same_directory():
            changes.insert(0, Phrase("working directory (to %s)", where or "a removed directory"))
            self._go_back()
        elif where != self._directory:
            self._directory = where  # renamed from outside: the same directory, named anew
        if changes and not self._warned:
            self._warned = True
            logger.warning(
                "%s changed the worker's %s: put back as they were, for the tasks that follow "
                "(said once per worker)",
                who,
                Phrase.joined(", ", changes),
            )

    def _go_back(self) -> None:
        """Enter the directory kept: by its descriptor, else (a task closed it) by its path."""
        try:
            _fchdir(self._directory_fd)
        except (OSError, ValueError):  # (ValueError: none could be kept)
            if self._directory is not None:
                with contextlib.suppress(OSError):  # (removed, or no longer ours to enter)
                    _chdir(self._directory)

    def _same_directory(self) -> bool:
        """Whether the working directory is the one kept, whatever its path is now."""
        if self._directory_fd < 0:
            return False
        try:
            return os.path.samestat(_stat("."), _fstat(self._directory_fd))
        except OSError:
            return False

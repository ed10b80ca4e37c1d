"""A worker's fds 0, 1 and 2 and its ``sys.stdout`` and ``sys.stderr``, put back after a task.

A task that closes file descriptors 0, 1 or 2 (``os.close(2)``), redirects 1 or 2
(``os.dup2(f, 1)``), or leaves ``sys.stdout`` or ``sys.stderr`` replaced or closed, would
break every later task of its worker: each is put back as the worker set it up once the task
ends (a closed stream by a new one on the same fd), with a warning (once per worker). The
check costs about a microsecond a task: fds 1 and 2 are known to still be the capture's pipe
by its size (:data:`~dispatcher.server.capture.PIPE_SIZE`, which few other pipes have), and
fd 0 to be open (fd 0 pointed at another file is not noticed).

The worker's own descriptors cannot be put back so: the read end of the capture's pipe, and
the copies of the standard output and error its log goes to, which it alone holds. A task
that closes one (a double ``os.close()`` of a number since reused, a ``closerange()``)
would have the worker's every later line lost without a word, or written into a file the
task opened next, which takes the closed number; a pipe left without its reader would have
every later ``print()`` fail. :meth:`StdFdsGuard.fds_taken` tells, after each task, that
the worker must be replaced (about a microsecond: an ``fcntl`` and a ``fstat``); until
then, a log line is written only while its descriptor is still the log's file.

A base class of :class:`~dispatcher.server.capture.OutputCapture`, which sets them up.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from typing import Final, TextIO

from dispatcher.server.captured_output import CapturedOutput
from dispatcher.server.log_background import BackgroundStream
from dispatcher.server.log_records import get_logger

logger = get_logger("dispatcher.worker")

_fcntl: Final = fcntl.fcntl  # (these as imported: task code may patch os)
_fstat: Final = os.fstat
_dup2: Final = os.dup2
_GETPIPE_SZ: Final = fcntl.F_GETPIPE_SZ
_GETFD: Final = fcntl.F_GETFD

_STD_FDS: Final = ("standard input (fd 0)", "standard output (fd 1)", "standard error (fd 2)")


class StdFdsGuard:
    """Checks, after each task, that fds 0, 1 and 2 and the std streams are as set up."""

    _saved_fds: tuple[int, ...]
    _read_fd: int
    _log_streams: tuple[BackgroundStream, ...]
    _pipe_size: int
    _streams: tuple[TextIO, TextIO]
    _warned: bool
    _current: CapturedOutput

    def keep_streams(self) -> None:
        """Take ``sys.stdout`` and ``sys.stderr`` as they are now as the ones to put back.

        Called once the worker is set up: a worker hook or a module it imported may have
        wrapped them (a line-buffered writer, a colouring one), and tasks keep that.
        """
        self._streams = (sys.stdout, sys.stderr)

    def fds_taken(self) -> str | None:
        """What task code closed or replaced of the worker's own descriptors, if anything.

        ``"output"``: the capture's pipe; ``"log"``: a copy the log goes to; else ``None``.
        """
        try:
            pipe = self._read_fd < 0 or _fcntl(self._read_fd, _GETPIPE_SZ) == self._pipe_size
        except OSError:
            pipe = False
        if not pipe:
            return "output"
        for stream in self._log_streams:
            if not stream.intact():
                return "log"
        return None

    def _put_back_std_fds(self) -> None:
        """Put back fds 0, 1 and 2, ``sys.stdout`` and ``sys.stderr`` if a task changed them."""
        stdout, stderr = self._streams
        try:
            intact = (
                sys.stdout is stdout
                and sys.stderr is stderr
                and not stdout.closed
                and not stderr.closed
                and _fcntl(1, _GETPIPE_SZ) == self._pipe_size == _fcntl(2, _GETPIPE_SZ)
                and _fcntl(0, _GETFD) >= 0
            )
        except (OSError, AttributeError):  # closed, or not a pipe; a stream of a hook's own
            intact = False
        if not intact and self._saved_fds:
            self._restore()

    def _restore(self) -> None:
        """Put back what the task that ends changed of fds 0, 1 and 2 and the std streams."""
        changed = []
        for fd, saved in enumerate(self._saved_fds):
            try:
                same = os.path.samestat(_fstat(fd), _fstat(saved))
            except OSError:
                same = False
            if not same:
                changed.append(_STD_FDS[fd])
                with contextlib.suppress(OSError):  # (our copy closed too: nothing to do)
                    _dup2(saved, fd)
        kept = []
        for fd, name, current in ((1, "sys.stdout", sys.stdout), (2, "sys.stderr", sys.stderr)):
            stream = self._streams[fd - 1]
            closed = _closed(stream)
            if closed or current is not stream:
                changed.append(name)
            kept.append(_reopened(stream, fd) if closed else stream)
        self._streams = (kept[0], kept[1])
        sys.stdout, sys.stderr = self._streams
        if changed and not self._warned:
            self._warned = True
            current = self._current
            logger.warning(
                "task %s (uuid %s) closed or replaced the worker's %s: put back as they were, "
                "for the tasks that follow (said once per worker)",
                current.task,
                current.uuid,
                ", ".join(changed),
            )


def _closed(stream: TextIO) -> bool:
    """Whether *stream* is closed (a stream without a ``closed`` that says so is not)."""
    try:
        return stream.closed is True
    except Exception:
        return False


def _reopened(stream: TextIO, fd: int) -> TextIO:
    """A new text stream on *fd* for the closed *stream* (its encoding and errors kept)."""
    reopened = open(  # noqa: SIM115 (sys.stdout or sys.stderr: open for the life of the process)
        fd,
        "w",
        encoding=getattr(stream, "encoding", None) or "utf-8",
        errors=getattr(stream, "errors", None) or "backslashreplace",
        closefd=False,
    )
    if getattr(stream, "line_buffering", False) is True:
        reopened.reconfigure(line_buffering=True)
    return reopened

"""A worker's standard output and error, captured per task, capped, and logged with a prefix.

:meth:`OutputCapture.start` points file descriptors 1 and 2 at a pipe, so that ``print()``,
writes from C code and the output of child processes all land there. A daemon thread drains
the pipe continuously (a task writing without end never blocks) into the buffer of the task
running, which keeps the first ``cap`` bytes and counts the rest. When the task ends, its
output is kept (:meth:`OutputCapture.end`), and logged once the worker has reported the
task's end (:meth:`OutputCapture.log_ended`), one line at a time, ``task output [<task>
<uuid>] <line>``, escaped like every logged value, followed by ``task output [<task>
<uuid>]: N more bytes dropped`` when it wrote more than the cap. What is written between
tasks (hooks) is kept the same way and logged before the next task, or when the worker
stops. A worker stopped by SIGTERM in the middle of a task (one that resisted its cancel)
logs what the task wrote until then; one stopped while it logs the output of a task that
ended (over ``worker.max_memory`` then, say) logs the rest of it. A task's buffer is a
:class:`~dispatcher.server.captured_output.CapturedOutput`.

The worker's log goes to copies of the standard output and error it inherited, through
background streams (:mod:`dispatcher.server.log_background`): a log's reader that does
not read never holds a task, nor the report of its end (lines are dropped and counted
instead, see :meth:`OutputCapture.lines_dropped`). When both are the same file (``2>&1``,
journald, a container's log), one stream writes for both, so that their lines stay in the
order they were written.

A task that closes or redirects fds 0, 1 or 2, or replaces ``sys.stdout`` or ``sys.stderr``,
has them put back once it ends; one that closes the capture's pipe or the log's copies has
its worker replaced (:mod:`dispatcher.server.std_fds_guard`, a base class of
:class:`OutputCapture`).

Logging handlers of the application's that write to standard output or error are not
captured: they write to the log at once (see :mod:`dispatcher.server.log_streams`).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import select
import sys
import threading
from typing import Final, TextIO, cast

from dispatcher.server.captured_output import CapturedOutput
from dispatcher.server.log_background import BackgroundStream, drain_streams
from dispatcher.server.log_handler import LAST_LINES_WAIT
from dispatcher.server.log_records import get_logger
from dispatcher.server.log_streams import HandlerStreams
from dispatcher.server.log_writer import MAX_QUEUED_CHARS
from dispatcher.server.std_fds_guard import StdFdsGuard

logger = get_logger("dispatcher.worker")

_os_read: Final = os.read  # (as imported: task code may patch os)

_READ_SIZE: Final = 1 << 16

_MAX_READS_AT_SWITCH: Final = 64
"""Reads (of up to 64 KiB) at the end of a task, at most: a child process the task left
writing cannot hold the worker; what it writes later goes to the next buffer."""


PIPE_SIZE: Final = 1 << 17
"""Bytes the capture's pipe holds: twice the default, so that fds 1 and 2 pointing at
another pipe (or at anything else) are told apart by one ``fcntl`` each."""

_SALVAGE_LOCK_WAIT: Final = 0.1
"""Seconds a stopped worker waits for the capture's lock before logging what it has."""

_SALVAGE_LOG_WAIT: Final = 0.2
"""Seconds a stopped worker waits, at most, for its log lines to be written before it ends
(the service sends SIGKILL half a second after SIGTERM)."""

_LOG_CHARS_PER_OUTPUT_BYTE: Final = 4
"""Characters of log lines a worker lets wait, per byte of a task's output kept (beyond
:data:`~dispatcher.server.log_writer.MAX_QUEUED_CHARS`): a task's whole output, logged at
once with its prefixes, fits while the reader keeps up."""

_NOTICE_FORMAT: Final = "%(levelname)s %(name)s: %(message)s"
"""The format of the line saying that lines were dropped, when the worker gives none."""

_ADOPT_RETRY_MS: Final = 50
"""Milliseconds after which the thread draining the pipe looks again at a logging handler it
found busy (see :meth:`HandlerStreams.adopt`), when no output wakes it before."""


class OutputCapture(StdFdsGuard):
    """Captures file descriptors 1 and 2 of this process; see the module docstring."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._lock = threading.Lock()
        self._between = CapturedOutput(cap)
        """What is written between tasks (kept from one to the next: one allocation less)."""
        self._current = self._between
        self._read_fd = -1
        self._waiting: select.poll | None = None
        """Tells, without reading, whether the pipe holds anything (for the main thread)."""
        self.log_stream: TextIO = sys.stderr
        """Where the worker's own log goes: the original standard error, once started."""
        self._saved_fds: tuple[int, ...] = ()
        """Copies of fds 0, 1 and 2 as set up, to put back (see :meth:`_put_back_std_fds`)."""
        self._pipe_size = -1
        self._streams = (sys.stdout, sys.stderr)
        self._warned = False
        self._handlers: HandlerStreams | None = None
        """Points the application's logging handlers past the capture, once started."""
        self._ended: CapturedOutput | None = None
        """The output of the task that ended, until it is logged."""
        self._log_streams: tuple[BackgroundStream, ...] = ()
        """The copies of standard output and error that the log goes to, once started."""

    def start(self, formatter: logging.Formatter | None = None) -> TextIO:
        """Keep a copy of standard error for the log, redirect fds 1 and 2; return the copy.

        The copy (and that of standard output, for the application's logging handlers) is a
        :class:`~dispatcher.server.log_background.BackgroundStream`: its lines never wait for
        the reader; *formatter* makes the line saying how many were dropped. The thread
        that drains the pipe starts before fds 1 and 2 point at it: when it cannot start
        (the process limit reached), the error reaches the service's log.
        """
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        self._read_fd = read_fd
        try:
            threading.Thread(target=self._drain, name="output-capture", daemon=True).start()
        except BaseException:
            os.close(read_fd)
            os.close(write_fd)
            self._read_fd = -1
            raise
        notice = formatter or logging.Formatter(_NOTICE_FORMAT)
        limit = MAX_QUEUED_CHARS + _LOG_CHARS_PER_OUTPUT_BYTE * self.cap
        log = BackgroundStream(os.dup(2), notice, logger.name, limit)
        if _same_file(1, 2):  # (2>&1, journald, docker): one thread keeps their lines in order
            out = log
            self._log_streams = (log,)
        else:
            out = BackgroundStream(os.dup(1), notice, logger.name, limit)
            self._log_streams = (log, out)
        self.log_stream = cast(TextIO, log)
        out_stream = cast(TextIO, out)
        with contextlib.suppress(OSError):  # (over the user's limit: the check is weaker)
            fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        self._pipe_size = fcntl.fcntl(write_fd, fcntl.F_GETPIPE_SZ)
        _flush_std_streams()
        os.dup2(write_fd, 1)
        os.dup2(write_fd, 2)
        self._saved_fds = (os.dup(0), write_fd, write_fd)  # (not inherited by children)
        self._streams = (sys.stdout, sys.stderr)
        self._waiting = select.poll()
        self._waiting.register(read_fd, select.POLLIN)
        self._handlers = HandlerStreams(out_stream, self.log_stream)
        self._handlers.adopt()
        return self.log_stream

    def begin(self, task: str, uuid: str) -> None:
        """A task starts: log what was written since the last one; collect the task's output.

        First points the logging handlers made since the last task past the capture (those
        that wrote since are pointed already, by the thread that read what they wrote).
        """
        if self._handlers is not None:
            self._handlers.adopt()
        self.log_ended()
        self._switch(CapturedOutput(self.cap, task, uuid)).emit()

    def end(self) -> None:
        """The task has ended: keep its output for :meth:`log_ended`; collect what comes next.

        What comes next is collected as written between tasks. Also puts back fds 0, 1 and
        2, ``sys.stdout`` and ``sys.stderr`` if it changed them.
        """
        self._put_back_std_fds()
        self.log_ended()  # (one ended before and not logged: in its order)
        self._ended = self._switch(self._between)

    def log_ended(self) -> None:
        """Log the output of the task that ended last, unless it is logged already.

        The worker calls it once it has reported the task's end: logging a large output
        takes time (milliseconds), which the task's timeout, and the report that ends a
        durable job, need not wait for.
        """
        ended = self._ended
        if ended is not None:
            ended.emit()  # (kept until logged whole: a SIGTERM meanwhile logs the rest)
            self._ended = None

    def lines_dropped(self) -> int:
        """Log lines dropped so far, because the log's reader did not read them in time."""
        dropped = 0
        for stream in self._log_streams:
            dropped += stream.dropped
        return dropped

    def close(self) -> None:
        """Log what is left; later writes to fd 1 are discarded, to fd 2 go to the log.

        The log's lines are written before it returns, :data:`LAST_LINES_WAIT` seconds at
        most (those the reader does not read by then are lost).
        """
        self.end()
        self.log_ended()
        self._drain_log(LAST_LINES_WAIT)
        if self._read_fd < 0:
            return
        _flush_std_streams()
        with contextlib.suppress(OSError):
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.close(null)
            os.dup2(self.log_stream.fileno(), 2)
        for fd in set(self._saved_fds):  # the pipe's last writer: the drain thread ends
            with contextlib.suppress(OSError):
                os.close(fd)
        self._saved_fds = ()

    def salvage(self) -> None:
        """Log what the current task (or the time between tasks) wrote so far.

        For a worker being stopped in the middle of a task, from its SIGTERM handler: the
        lock may be held by the very code interrupted, so it is waited for briefly only.
        """
        _flush_std_streams()
        if self._lock.acquire(timeout=_SALVAGE_LOCK_WAIT):
            try:
                if self._waiting is not None and self._waiting.poll(0):
                    self._read(_MAX_READS_AT_SWITCH)
            finally:
                self._lock.release()
        self.log_ended()
        self._current.emit()
        self._drain_log(_SALVAGE_LOG_WAIT)

    def _drain_log(self, timeout: float) -> None:
        """Wait until the log's lines are written, *timeout* seconds at most (in all)."""
        drain_streams(self._log_streams, timeout)

    def _switch(self, following: CapturedOutput) -> CapturedOutput:
        """Collect what was written so far into the current buffer; make *following* current."""
        _flush_std_streams()
        with self._lock:
            # Polling first is cheaper than a read that fails, and most tasks print nothing.
            if self._waiting is not None and self._waiting.poll(0):
                self._read(_MAX_READS_AT_SWITCH)
            previous, self._current = self._current, following
        return previous

    def _read(self, reads: int) -> bool:
        """Read what the pipe holds (up to *reads* reads); ``False`` once it has no writer.

        Called with the lock held, so that a chunk read always goes to the buffer of the
        task that was current when it was read.
        """
        for _ in range(reads):
            try:
                chunk = _os_read(self._read_fd, _READ_SIZE)
            except BlockingIOError:
                return True
            except OSError:  # task code closed it (see fds_taken()): nothing more to read
                return False
            if not chunk:
                return False
            self._current.add(chunk)
        return True

    def _drain(self) -> None:
        poller = select.poll()
        poller.register(self._read_fd, select.POLLIN)
        adopted = True
        while True:
            if poller.poll(None if adopted else _ADOPT_RETRY_MS):
                with self._lock:  # one read at a time: a task's end never waits long for it
                    if not self._read(1):
                        return  # every writer has gone (fds 1 and 2 closed)
            # Output: maybe the first line of a handler made in the task now running.
            handlers = self._handlers
            adopted = handlers is None or handlers.adopt(waiting=False)


def _same_file(fd: int, other: int) -> bool:
    """Whether file descriptors *fd* and *other* point at the same file (pipe, socket...)."""
    try:
        return os.path.samestat(os.fstat(fd), os.fstat(other))
    except OSError:
        return False


def _flush_std_streams() -> None:
    """Push what Python holds in ``sys.stdout``/``sys.stderr`` into the file descriptors."""
    try:  # the common case in one go: per-stream handling costs a microsecond a task
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:  # one is None, closed, or was replaced with something odd
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()

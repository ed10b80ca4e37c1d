"""Log lines written to a file descriptor by a thread of their own, never by the caller.

The service's main process logs from its event loop. Written there, a line blocks the loop
as long as the log's reader does not read: a pipe holds 64 KiB, and once it is full (a
``| less`` paused, a log shipper stuck, a container runtime applying back-pressure), the next
line would stop dispatching, timers, control commands and the renewal of durable leases.
A :class:`LineWriter` takes the lines instead (appending to a list costs less than the
write did), and its thread writes them, several at once. When more than its limit of text
waits (the reader fell behind for long), the lines that come are dropped, and counted; once
writing works again, a line says how many were dropped, where they were. Lines are written
only while the file descriptor is the file it was when the writer was made: one that task
code closed (in a worker), and that may since number a file of the task's, gets none.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Final

MAX_QUEUED_CHARS: Final = 1 << 20
"""Characters of log lines that wait to be written, at most (those being written included): a
few seconds of a busy service's lines at ``DEBUG``. Lines that come when this much waits are
dropped."""

GATHER_TIME: Final = 0.005
"""Seconds the writer, woken by a line, waits for more before it writes them all."""

STALLED_WAIT: Final = 0.1
"""Seconds a drain waits for a write to end, when the drain before it ran out of time."""

_fstat: Final = os.fstat
_write: Final = os.write
_sleep: Final = time.sleep
_monotonic: Final = time.monotonic
"""Taken when this module is imported: task code that patches ``os`` or ``time`` (a mock
started and never stopped, a green-thread library) leaves the writer as it was."""

_KEPT_SIGNALS: Final = frozenset(
    getattr(signal, name)
    for name in ("SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL", "SIGABRT")
    if hasattr(signal, name)  # (Windows has no SIGBUS)
)
"""Signals the writer's thread does not block (those a fault raises in the faulting thread)."""


def file_identity(fd: int) -> tuple[int, int] | None:
    """The device and inode of the file *fd* is open on; ``None`` when it is not open."""
    try:
        stat = _fstat(fd)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


class LineWriter:
    """Writes the lines it is given to the file descriptor *fd*, from a thread of its own.

    :meth:`put` never waits for the file: it adds the line to those waiting, or drops it
    when :data:`MAX_QUEUED_CHARS` (*limit*) characters wait already. The thread writes the
    waiting lines in their order, as one write; after lines were dropped, it writes
    ``notice(number)`` where they would have been (a line in the log's format, saying how
    many). :meth:`drain` waits, for a bounded time, until everything given is written.
    Lines are encoded with *encoding* and *errors* (the stream's that the fd is under).
    """

    def __init__(
        self,
        fd: int,
        notice: Callable[[int], str],
        encoding: str = "utf-8",
        errors: str = "backslashreplace",
        limit: int = MAX_QUEUED_CHARS,
        identity: tuple[int, int] | None = None,
    ) -> None:
        self._fd = fd
        self._identity = file_identity(fd) if identity is None else identity
        """The file the lines go to (*identity*, else the one *fd* is open on now): the
        descriptor open on another one is not written to."""
        self._notice = notice
        self._encoding = encoding
        self._errors = errors
        self._limit = limit
        # Reentrant: a signal handler that logs (a worker's SIGTERM handler logs what its
        # task wrote) may run in the thread that was handing a line over, within put().
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        """Notified when a line comes for a writer that waits (and when it must stop)."""
        self._written = threading.Condition(self._lock)
        """Notified when a write ends, and when the writer has written all it was given."""
        self._lines: list[str] = []
        self._chars = 0
        """Characters of the lines waiting, and of those being written."""
        self._unsaid = 0
        """Lines dropped since the last notice was written (or its write failed)."""
        self._idle = False
        """The thread waits for lines: the next one must wake it."""
        self._stopping = False
        self._writes = 0
        """Writes done so far (each of the lines that waited when it began)."""
        self._gave_up_at: int | None = None
        """:attr:`_writes` when a :meth:`drain` last ran out of time."""
        self.dropped = 0
        """Lines dropped so far: those that did not fit, and those whose write failed."""
        self._thread = threading.Thread(target=self._run, name="dispatcher-log", daemon=True)

    def start(self) -> None:
        """Start the writing thread."""
        self._thread.start()

    def put(self, line: str) -> None:
        """Have *line* (ending with its line break) written; drop it if too much waits."""
        with self._lock:
            if self._chars >= self._limit:
                self._unsaid += 1
                self.dropped += 1
                return
            self._lines.append(line)
            self._chars += len(line)
            if self._idle:
                self._idle = False
                self._wake.notify()

    def drain(self, timeout: float) -> bool:
        """Wait until every line given so far is written, *timeout* seconds at most.

        Tell whether it was (``False``: the reader has not read them in time). After a drain
        that ran out of time, the next one waits :data:`STALLED_WAIT` seconds at most for a
        write to end, then *timeout* if one did: a reader gone for good holds the process's
        stop once, not at every drain.
        """
        start = _monotonic()
        deadline = start + timeout
        with self._lock:
            writes = self._writes
            if self._gave_up_at == writes:
                deadline = min(deadline, start + STALLED_WAIT)
            while self._lines or self._unsaid or not self._idle:
                if self._writes != writes:  # the reader reads again
                    deadline = start + timeout
                remaining = deadline - _monotonic()
                if remaining <= 0:
                    self._gave_up_at = self._writes
                    return False
                if not self._thread.is_alive():
                    return False
                self._written.wait(remaining)
        return True

    def stop(self, timeout: float) -> bool:
        """Write what waits (*timeout* seconds at most), then end the thread.

        Tell whether the thread ended: when the writing did not end in time, it goes on (its
        thread is a daemon: it does not hold the process's exit), and lines still given to
        :meth:`put` wait or are dropped as before.
        """
        if not self.drain(timeout):
            return False
        with self._lock:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        # Signals are the main thread's to handle (a write here would be interrupted).
        if sys.platform != "win32":  # (which has no signal masks; dispatcherctl runs there)
            signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals() - _KEPT_SIGNALS)
        while True:
            with self._lock:
                while not (self._lines or self._unsaid):
                    if self._stopping:
                        return
                    self._idle = True
                    self._written.notify_all()
                    self._wake.wait()
            # Lines come in bursts (a task's few, many under load): it lets the others of
            # the burst come, then writes them at once, not one by one.
            _sleep(GATHER_TIME)
            with self._lock:
                lines, self._lines = self._lines, []
                unsaid, self._unsaid = self._unsaid, 0
            self._write(lines, unsaid)

    def _write(self, lines: list[str], unsaid: int) -> None:
        """Write *lines*, then the notice of *unsaid* lines dropped after them (if any)."""
        text = "".join(lines)
        chars = len(text)
        try:
            if unsaid:
                text += self._notice(unsaid)
            data = memoryview(text.encode(self._encoding, self._errors))
            if file_identity(self._fd) != self._identity:  # (a system call a write, at most)
                raise OSError(f"file descriptor {self._fd} was closed or replaced")
            while data:
                data = data[_write(self._fd, data) :]
        except Exception:  # EPIPE, EBADF, another file, a notice that could not be made: lost
            with self._lock:
                self.dropped += len(lines)
        with self._lock:
            self._chars -= chars
            self._writes += 1
            self._written.notify_all()

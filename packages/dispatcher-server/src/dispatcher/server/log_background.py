"""A worker's log streams: text streams whose writes never wait for the log's reader.

A worker writes its log (what its tasks print, what task code logs, its own lines) to copies
of the standard output and error it inherited, often a pipe to a pager, a log shipper or
journald. Written by the worker's main thread, a line would wait as long as that reader does
not read, and the task with it: its timeout, the report of its end, the next task. A
:class:`BackgroundStream` hands each write to a
:class:`~dispatcher.server.log_writer.LineWriter` instead, whose thread writes it, and which
drops (and counts) the lines that come while too much waits, as the service's main process
does (see :mod:`dispatcher.server.log_handler`).
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Iterable
from typing import Any, Final

from dispatcher.config.forking import at_fork
from dispatcher.schema.log_fields import EVENT
from dispatcher.server.log_text import counted
from dispatcher.server.log_writer import LineWriter, file_identity


def dropped_notice(formatter: logging.Formatter, logger: str, number: int, limit: int) -> str:
    """The line saying that *number* lines were dropped (more than *limit* characters waited).

    Made by *formatter*, as a ``WARNING`` of the logger *logger*, with the ``dispatcher_event``
    ``log_lines_dropped``; it ends with its line break.
    """
    record = logging.LogRecord(
        logger,
        logging.WARNING,
        __file__,
        0,
        "%s dropped: the log's reader fell behind (more than %d characters waited)",
        (counted(number, "log line"), limit),
        None,
    )
    record.__dict__[EVENT] = "log_lines_dropped"
    return formatter.format(record) + "\n"


class BackgroundStream:
    """A text stream on the file descriptor *fd* whose writes a thread of its own makes.

    :meth:`write` hands the text (one record: a line, or a line and its indented block) to a
    :class:`~dispatcher.server.log_writer.LineWriter`, started at the first write (a worker
    that logs nothing starts no thread), which drops it when *limit* characters wait already;
    a line made by *formatter* (as the logger *logger*'s) says how many were dropped, where
    they were. :meth:`flush` does not wait (a logging handler flushes after every record):
    :meth:`drain` does, for a bounded time. Where no thread can start, and in a process
    forked from this one (a task's child: the thread is not there), each write is made at
    once, as a plain stream would.
    """

    def __init__(self, fd: int, formatter: logging.Formatter, logger: str, limit: int) -> None:
        self._stream = open(  # noqa: SIM115 (open for the life of the process)
            fd, "w", encoding="utf-8", errors="backslashreplace", buffering=1
        )
        self._identity = file_identity(fd)
        self._formatter = formatter
        self._logger = logger
        self._limit = limit
        self._writer: LineWriter | None = None
        self._direct = False
        """Write at once: no thread could start, or this is a forked child."""
        _STREAMS.add(self)

    @property
    def dropped(self) -> int:
        """Writes dropped so far (the reader behind)."""
        writer = self._writer
        return 0 if writer is None else writer.dropped

    def write(self, text: str) -> int:
        """Have *text* written by the thread (dropped when too much waits); return its length."""
        writer = self._writer
        if writer is None:
            writer = self._start()
            if writer is None:
                return self._stream.write(text)
        writer.put(text)
        return len(text)

    def flush(self) -> None:
        """Nothing to do: the thread writes what it is given as soon as the reader reads."""

    def drain(self, timeout: float) -> bool:
        """Wait until what was written is, *timeout* seconds at most; tell whether it was."""
        writer = self._writer
        if writer is None:
            self._stream.flush()
            return True
        return writer.drain(timeout)

    def fileno(self) -> int:
        """The file descriptor written to."""
        return self._stream.fileno()

    def intact(self) -> bool:
        """Whether the file descriptor written to is still open on the file it was.

        Task code may have closed it, and put a file of its own in its place. One system call.
        """
        try:
            fd = self._stream.fileno()
        except ValueError:  # the stream itself closed (by code that found it)
            return False
        return file_identity(fd) == self._identity

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)  # encoding, errors, isatty()...

    def _start(self) -> LineWriter | None:
        if self._direct:
            return None
        writer = LineWriter(
            self._stream.fileno(),
            self._notice,
            self._stream.encoding,
            self._stream.errors or "backslashreplace",
            self._limit,
            self._identity,
        )
        try:
            writer.start()
        except RuntimeError:  # no thread can start now: each write is made at once
            self._direct = True
            return None
        self._writer = writer
        return writer

    def _notice(self, number: int) -> str:
        return dropped_notice(self._formatter, self._logger, number, self._limit)

    def _forget_writer(self) -> None:
        """In a forked child: the thread is gone, write at once from now on."""
        self._writer = None
        self._direct = True


_STREAMS: Final[weakref.WeakSet[BackgroundStream]] = weakref.WeakSet()
"""Every :class:`BackgroundStream` of this process."""


def drain_streams(streams: Iterable[BackgroundStream], timeout: float) -> bool:
    """Wait until *streams* have written what they were given, *timeout* seconds in all.

    One deadline for all: a reader that does not read holds the caller *timeout* seconds,
    however many streams write to it. Tell whether all was written.
    """
    deadline = time.monotonic() + timeout
    written = True
    for stream in streams:
        written = stream.drain(max(0.0, deadline - time.monotonic())) and written
    return written


def drain_log_streams(timeout: float) -> None:
    """Wait until this process's background streams have written what they were given.

    *timeout* seconds at most in all; before the process ends with ``os._exit()``.
    """
    drain_streams(list(_STREAMS), timeout)


def _forget_writers() -> None:
    for stream in list(_STREAMS):
        stream._forget_writer()


at_fork(after_in_child=_forget_writers)

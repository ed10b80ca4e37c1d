"""The service's own log handler, and its lines written by a thread of their own.

:func:`~dispatcher.server.log_setup.log_to` puts a :class:`ServiceHandler` on the root
logger. It writes each record as it comes, except within :func:`logs_written_in_background`
(the service's main process while it runs): a
:class:`~dispatcher.server.log_writer.LineWriter` then writes its lines, so that the event
loop never waits for the log's reader.
"""

from __future__ import annotations

import contextlib
import logging
import traceback
import weakref
from collections.abc import Iterator
from typing import Final, TextIO

from dispatcher.config.forking import at_fork
from dispatcher.server.log_arguments import Block
from dispatcher.server.log_background import dropped_notice
from dispatcher.server.log_text import escape
from dispatcher.server.log_writer import MAX_QUEUED_CHARS, LineWriter


class ServiceHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler :func:`~dispatcher.server.log_setup.log_to` puts on the root logger.

    Told apart from the application's handlers by its class (:func:`is_service_handler`).
    It writes each record as it comes, as a :class:`logging.StreamHandler` does, except
    within :func:`logs_written_in_background`: its lines are then written by a
    :class:`~dispatcher.server.log_writer.LineWriter`, so that no record waits for the
    log's reader.
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self.writer: LineWriter | None = None
        """Where its lines go while they are written in the background."""
        _HANDLERS.add(self)

    def emit(self, record: logging.LogRecord) -> None:
        """Write *record*'s line, or hand it to the background writer."""
        writer = self.writer
        if writer is None:
            super().emit(record)
            return
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        writer.put(line + self.terminator)

    def handleError(self, record: logging.LogRecord) -> None:
        """Say that *record* could not be formatted: on standard error, or to the writer."""
        writer = self.writer
        if writer is None or not logging.raiseExceptions:
            super().handleError(record)
            return
        with contextlib.suppress(Exception):
            writer.put(
                f"--- Logging error ---{Block(traceback.format_exc())}\n"
                f"  | Message: {escape(repr(record.msg))}\n"
                f"  | Arguments: {escape(repr(record.args))}\n"
            )

    def flush(self) -> None:
        """Write what waits: at once, or, in the background, within a bounded time."""
        writer = self.writer
        if writer is None:
            super().flush()
        else:
            writer.drain(LAST_LINES_WAIT)

    def close(self) -> None:
        """Write what waits (within a bounded time), and stop writing in the background."""
        writer, self.writer = self.writer, None
        if writer is not None:
            writer.stop(LAST_LINES_WAIT)
            _DROPPED_BEFORE[0] += writer.dropped
        super().close()

    def start_writer(self) -> bool:
        """Have a thread write the lines from now on; tell whether this call started it.

        Not for a stream without a file descriptor (nothing to wait for), nor where one
        writes already, nor when no thread can start (a process at its limit of threads:
        each line is then written as it comes, as before the service ran).
        """
        if self.writer is not None:
            return False
        stream = self.stream
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):
            return False
        super().flush()  # (what its buffer holds goes first)
        writer = LineWriter(
            fd,
            self._dropped_notice,
            getattr(stream, "encoding", None) or "utf-8",
            getattr(stream, "errors", None) or "backslashreplace",
        )
        try:
            writer.start()
        except RuntimeError:  # no thread can start now: each line is written as it comes
            return False
        self.writer = writer
        return True

    def stop_writer(self) -> None:
        """Write each record as it comes again, once what waits is written (within a bound).

        When it is not written in time, the thread goes on writing in the background (the
        reader fell behind: a line written now would wait for it).
        """
        writer = self.writer
        if writer is not None and writer.stop(LAST_LINES_WAIT):
            self.writer = None
            _DROPPED_BEFORE[0] += writer.dropped

    def _dropped_notice(self, number: int) -> str:
        """The line saying that *number* lines were dropped, in this handler's format."""
        formatter = self.formatter or logging.Formatter()
        return dropped_notice(formatter, "dispatcher.service", number, MAX_QUEUED_CHARS)


LAST_LINES_WAIT: Final = 2.0
"""Seconds a service that stops waits, at most, for its last log lines to be written: when
the log's reader does not read, they are lost rather than hold the stop."""

_HANDLERS: Final[weakref.WeakSet[ServiceHandler]] = weakref.WeakSet()
"""Every :class:`ServiceHandler` of this process."""

_DROPPED_BEFORE: Final = [0]
"""Log lines dropped by the background writers that ended, and those the workers reported."""


def log_lines_dropped() -> int:
    """How many log lines the service dropped (its log's reader behind).

    Counts the lines of :func:`logs_written_in_background`'s writers in this process, and
    those the workers reported (:func:`count_worker_lines_dropped`); never the ones an
    application's own handlers may lose.
    """
    writing = sum(handler.writer.dropped for handler in list(_HANDLERS) if handler.writer)
    return _DROPPED_BEFORE[0] + writing


def count_worker_lines_dropped(number: int) -> None:
    """Count *number* log lines a worker dropped, as it reported (with a task's end)."""
    _DROPPED_BEFORE[0] += number


@contextlib.contextmanager
def logs_written_in_background() -> Iterator[None]:
    """Within the block, the service's handler writes from a thread of its own.

    For the service's main process while it runs (its event loop must never wait for the
    log's reader): a record's line is handed to a
    :class:`~dispatcher.server.log_writer.LineWriter`, and dropped when too many wait (see
    :data:`~dispatcher.server.log_writer.MAX_QUEUED_CHARS`). When the block ends, what waits
    is written, for :data:`LAST_LINES_WAIT` seconds at most, and each record is written as
    it comes again (unless the writing did not end in time: it then goes on in the
    background). Only the handler of :func:`~dispatcher.server.log_setup.log_to` is
    concerned: an application's own handlers write as the application set them up.
    """
    root = logging.getLogger()
    started = [h for h in root.handlers if isinstance(h, ServiceHandler) and h.start_writer()]
    try:
        yield
    finally:
        for handler in started:
            handler.stop_writer()


def flush_logs(timeout: float = LAST_LINES_WAIT) -> None:
    """Have the lines waiting to be written written, *timeout* seconds at most (for each).

    Before the process ends without Python's own clean-up (``os._exit()``).
    """
    for handler in list(_HANDLERS):
        writer = handler.writer
        if writer is not None:
            writer.drain(timeout)


def _forget_writers() -> None:
    """In a child forked: the writers' threads are gone, the handlers write at once again."""
    for handler in list(_HANDLERS):
        handler.writer = None


at_fork(after_in_child=_forget_writers)


def is_service_handler(handler: logging.Handler) -> bool:
    """Tell whether *handler* is one :func:`~dispatcher.server.log_setup.log_to` made."""
    return isinstance(handler, ServiceHandler)

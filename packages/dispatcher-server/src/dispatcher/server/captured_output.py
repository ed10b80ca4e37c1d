"""The output of one task (or of the time between tasks): kept up to a cap, then logged.

A buffer of :class:`~dispatcher.server.capture.OutputCapture`, which fills it from the pipe
that fds 1 and 2 point at: it keeps the first ``cap`` bytes and counts the rest, and logs
them one line at a time, ``task output [<task> <uuid>] <line>``, then the count of the bytes
dropped.
"""

from __future__ import annotations

from dispatcher.server.log_records import get_logger
from dispatcher.server.log_text import MAX_LOGGED_CHARS

logger = get_logger("dispatcher.worker")


class CapturedOutput:
    """Output collected for one task (or between tasks): the first *cap* bytes, and a count."""

    __slots__ = ("cap", "chars_logged", "data", "dropped", "lines_logged", "task", "uuid")

    def __init__(self, cap: int, task: str | None = None, uuid: str = "") -> None:
        self.cap = cap
        self.task = task
        """The task's name; ``None`` between tasks."""
        self.uuid = uuid
        self.data = bytearray()
        self.dropped = 0
        """Bytes written beyond the cap."""
        self.lines_logged = 0
        """Lines of :attr:`data` logged by an :meth:`emit` that was interrupted."""
        self.chars_logged = 0
        """Characters of the next line logged by it (a long line is logged in pieces)."""

    def add(self, chunk: bytes) -> None:
        """Keep what fits under the cap; count the rest."""
        room = self.cap - len(self.data)
        if room >= len(chunk):
            self.data += chunk
            return
        if room > 0:
            self.data += chunk[:room]
        self.dropped += len(chunk) - max(room, 0)

    def emit(self) -> None:
        """Log what was collected, then forget it.

        One line per line written (long lines in pieces), then the count of bytes dropped.
        Called again after an interruption (the SIGTERM handler's call, made while the worker
        logs), it goes on from the line it was logging, and the piece of it.
        """
        if not self.data and not self.dropped:
            return
        args: tuple[str, ...] = ()
        if self.task is None:
            prefix = "worker output [between tasks]"
        else:
            prefix, args = "task output [%s %s]", (self.task, self.uuid)
        if self.data:
            text = self.data.decode("utf-8", "backslashreplace")
            lines = text.removesuffix("\n").split("\n")
            for number in range(self.lines_logged, len(lines)):
                line = lines[number]
                # Pieces short enough to be logged whole (arguments are cut at that length).
                for start in range(self.chars_logged, max(len(line), 1), MAX_LOGGED_CHARS):
                    logger.info(prefix + " %s", *args, line[start : start + MAX_LOGGED_CHARS])
                    self.chars_logged = start + MAX_LOGGED_CHARS
                self.lines_logged, self.chars_logged = number + 1, 0
        if self.dropped:
            logger.info(prefix + ": %d more bytes dropped", *args, self.dropped)
        self.data.clear()
        self.dropped = self.lines_logged = self.chars_logged = 0

"""Where ``dispatcherctl``'s output goes: stdout in one write, its own log lines on stderr.

With ``--json``, stdout holds JSON whatever the outcome (:func:`empty_json`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
from collections.abc import Iterator
from typing import Final

from dispatcher.server.log_records import EscapingFormatter

OBJECT_OUTPUTS: Final = frozenset({"retry", "purge", "cancel-job", "submit", "top"})
"""The commands whose ``--json`` output is one JSON object; the others' is a list (of replies,
or of jobs)."""


def empty_json(command: str) -> str:
    """What ``--json`` prints for *command* when it printed nothing: its output's shape, empty.

    It failed (the reason is on stderr), or no service answered.
    """
    return "{}\n" if command in OBJECT_OUTPUTS else "[]\n"


@contextlib.contextmanager
def output_in_one_write(empty: str | None = None) -> Iterator[None]:
    """Gather what the block prints, then write it at once.

    So that a reader that stops early (``dispatcherctl status | head -1``) has the whole
    output in its pipe before it goes: the command keeps its own exit status. If the block
    printed nothing, *empty* (if given) is written instead: with ``--json``, stdout always
    holds JSON, whatever the outcome.
    """
    shown = sys.stdout
    gathered = io.StringIO()
    sys.stdout = gathered
    try:
        yield
    finally:
        sys.stdout = shown
        text = gathered.getvalue() or empty
        if text:
            shown.write(text)
            shown.flush()


class _StderrHandler(logging.Handler):
    """Writes each record to the ``sys.stderr`` of the moment, escaped.

    ``top``'s live view puts a ``sys.stderr`` of its own in place while it draws; the
    escaping is :class:`~dispatcher.server.log_records.EscapingFormatter`'s.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


def _reported_otherwise(record: logging.LogRecord) -> bool:
    # The control client logs each reply it skipped; dispatcherctl reports them itself.
    return record.name != "dispatcher.control"


STDERR_HANDLER: Final = _StderrHandler()
"""The handler of what dispatcherctl logs (see :func:`log_to_stderr`)."""
STDERR_HANDLER.addFilter(_reported_otherwise)


def log_to_stderr(level: str) -> None:
    """Send what dispatcherctl logs (config warnings, ...) to stderr, from *level* up."""
    detailed = logging.getLevelName(level) < logging.WARNING
    fmt = (
        "dispatcherctl: %(levelname)s %(name)s: %(message)s"
        if detailed
        else "dispatcherctl: %(message)s"
    )
    STDERR_HANDLER.setFormatter(EscapingFormatter(fmt))
    STDERR_HANDLER.setLevel(level)
    root = logging.root
    if STDERR_HANDLER not in root.handlers:
        root.addHandler(STDERR_HANDLER)
    root.setLevel(level)

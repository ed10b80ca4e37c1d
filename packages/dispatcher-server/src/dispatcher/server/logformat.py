"""The service's log formats: ``text`` lines, or one JSON object per line.

``dispatcher-standalone --log-format json`` (or ``service.log_format: json``) has the main
process and every worker write :class:`JsonFormatter` lines to standard error, so that the
stream is JSON throughout. An application that embeds the service (``run_service()``) may
use :class:`JsonFormatter` in its own logging config too::

    "formatters": {"json": {"()": "dispatcher.server.logformat.JsonFormatter"}}
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Mapping
from typing import Any, Final

from dispatcher.config import Settings
from dispatcher.schema import LogFormat
from dispatcher.schema.log_fields import WORKER
from dispatcher.server.log_records import escaped
from dispatcher.server.log_text import safe_str

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
"""The service's text lines: ``2026-05-04 10:00:01,234 INFO dispatcher.tasks: ...``."""


def with_log_format(settings: Settings, log_format: LogFormat | None) -> Settings:
    """*settings* with ``service.log_format`` set to *log_format* (a command line's choice).

    As they are when it is ``None``.
    """
    if log_format is None or log_format == settings.service.log_format:
        return settings
    service = dataclasses.replace(settings.service, log_format=log_format)
    return dataclasses.replace(settings, service=service)


def service_formatter(log_format: LogFormat) -> logging.Formatter | str:
    """What the service's main process formats its records with, for ``log_to()``."""
    return JsonFormatter() if log_format == "json" else TEXT_FORMAT


def worker_formatter(log_format: LogFormat, worker_id: int) -> logging.Formatter | str:
    """What worker *worker_id* formats its own records with: it names the worker."""
    if log_format == "json":
        return JsonFormatter(defaults={WORKER: worker_id})
    return f"%(asctime)s %(levelname)s worker-{worker_id} %(name)s: %(message)s"


class HeldRecords(logging.Handler):
    """Keeps the process's records while the log format is not known yet.

    While the config is being read (which may log): written once it is known, the first
    lines are in the format of the rest.

    :meth:`hold` installs it as the root logger's only handler, :meth:`stop_holding` takes it
    away (before the root logger gets its handler for good), and :meth:`replay` has the
    root logger's handlers of then write what it kept (up to :data:`MAX_HELD` records).
    """

    MAX_HELD: Final = 1000

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        """Keep *record* (those beyond :data:`MAX_HELD` are dropped)."""
        if len(self.records) < self.MAX_HELD:
            self.records.append(record)

    @classmethod
    def hold(cls, level: int) -> HeldRecords:
        """Keep every record of level *level* or more from now on; return the keeper."""
        held = cls()
        logging.basicConfig(level=level, handlers=[held], force=True)
        return held

    def stop_holding(self) -> None:
        """Stop keeping records: take this handler off the root logger.

        (Not ``release``: that is :class:`logging.Handler`'s lock, released after each record.)
        """
        logging.root.removeHandler(self)

    def replay(self) -> None:
        """Write the records kept through the root logger's handlers, which replaced this."""
        root = logging.root
        records, self.records = self.records, []
        for record in records:
            root.handle(record)


_RECORD_ATTRIBUTES: Final = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
}
"""What every record holds without ``extra=`` (and what formatting adds to it)."""

_JSON_TYPES: Final = frozenset({str, int, float, bool, type(None)})


class JsonFormatter(logging.Formatter):
    r"""Formats a record as one JSON object on one line.

    The keys: ``time`` (ISO 8601, UTC, milliseconds), ``level``, ``logger``, ``message`` (as
    the text format writes it: values from outside escaped, a failure's traceback on
    indented lines), ``process``, ``exception`` and ``stack`` when the record has them, then
    every attribute given with ``extra=`` (the service's ``dispatcher_*`` ones, see
    :mod:`dispatcher.schema.log_fields`, and any other), a value JSON cannot hold written as
    text. *defaults* are keys every line has unless its record sets them. The output is
    ASCII (other characters as ``\u`` escapes), so no character of a value can end a line.
    Attributes whose name starts with ``_`` are left out.
    """

    def __init__(self, defaults: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self._defaults = dict(defaults or {})

    def format(self, record: logging.LogRecord) -> str:
        """The JSON text of *record* (its escaped copy's message, its own attributes)."""
        shown = escaped(record)
        entry: dict[str, Any] = {
            "time": _utc_time(record.created),
            "level": shown.levelname,
            "logger": shown.name,
            "message": shown.getMessage(),
            "process": record.process if record.process is not None else os.getpid(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
                entry[key] = value
        for key, value in self._defaults.items():
            entry.setdefault(key, value)
        try:
            return json.dumps(entry, allow_nan=False)
        except (TypeError, ValueError, RecursionError):
            return json.dumps({key: _plain(value) for key, value in entry.items()})


def _plain(value: object) -> object:
    """*value* if JSON holds it as it is, else its text."""
    if type(value) in _JSON_TYPES and value == value and value not in _INFINITIES:
        return value
    return safe_str(value)


_INFINITIES: Final = (float("inf"), float("-inf"))


def _utc_time(created: float) -> str:
    """*created* as ``2026-05-04T10:00:01.234Z``."""
    seconds = int(created)
    milliseconds = min(int((created - seconds) * 1000), 999)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{milliseconds:03d}Z"

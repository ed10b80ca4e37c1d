"""Log records that input from outside cannot forge, and the loggers that make them so.

Every value logged as an argument is escaped and cut short (:mod:`~dispatcher.server.log_text`,
:mod:`~dispatcher.server.log_arguments`); tracebacks and deliberate multi-line texts follow
their line with every line indented.

Modules get their logger from :func:`get_logger`, which installs :class:`EscapingFilter`
(our records are escaped where they are made, for whichever handler gets them);
:func:`~dispatcher.server.log_setup.log_to` gives the process's handler an
:class:`EscapingFormatter`, for records of other loggers: it writes them escaped, and leaves
them as they were logged for the application's other handlers (a JSON or Sentry handler gets
its ``extra=`` values whole).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Final

from dispatcher.server.log_arguments import Whole, safe_arg
from dispatcher.server.log_text import MAX_LOGGED_CHARS, escape, indented

_DONE: Final = "_dispatcher_escaped"
"""Record attribute set to :data:`_ESCAPED` once a record has been escaped (so it is escaped
only once)."""

_ESCAPED: Final = object()
"""The value of :data:`_DONE` in a record escaped: no other value counts (``extra=`` can set
the attribute, never to this)."""

_PLAIN_TYPES: Final = frozenset({int, float, bool, type(None), Whole})
"""Types of record attributes shown as they are (exactly these: not subclasses)."""

_TEXT_ATTRIBUTES: Final = (
    "name",
    "levelname",
    "pathname",
    "filename",
    "module",
    "funcName",
    "threadName",
    "processName",
    "taskName",  # Python 3.12 and later
)
"""The texts every record carries (beside its message) that a format may show."""

_TEXT_TYPES: Final = frozenset({str, type(None)})

_SAFE_TEXTS: Final[set[tuple[object, ...]]] = set()
"""Values of :data:`_TEXT_ATTRIBUTES` seen before with nothing to escape: a logger's records
share them (a set, as a record's texts are checked with one look-up)."""

_MAX_SAFE_TEXTS: Final = 1024
"""Most entries :data:`_SAFE_TEXTS` holds (it starts again, empty, when full)."""

_PLAIN_RECORD: Final = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None)))

_STANDARD_ATTRIBUTES: Final = _PLAIN_RECORD | {"message", "asctime", _DONE}
"""What a record holds without ``extra=``: the texts above, numbers, and those made apart
(``message`` and ``asctime`` once a handler before has formatted it)."""

_MOST_PLAIN_ATTRIBUTES: Final = len(_PLAIN_RECORD) + 1
"""A record (marked escaped) with more attributes than these may have some of ``extra=``."""


class EscapingFilter(logging.Filter):
    """Makes a record safe to write: see the module docstring.

    Arguments (``record.args``) are escaped and cut at :data:`MAX_LOGGED_CHARS` (numbers are
    left alone; a :class:`~dispatcher.server.log_arguments.Block` becomes indented lines);
    the message itself is escaped whole; an exception or stack trace is rendered into
    indented, escaped lines. Every other attribute a format can show is escaped and cut as
    an argument is: the logger's name and the level's name, the thread's, process's and
    asyncio task's names, the function, module and file names, and whatever ``extra=``
    added. Task code chooses them all (``logging.getLogger(any_text)``,
    ``logging.addLevelName()``, a thread's name). Never drops a record.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Escape *record* in place, once; return ``True``."""
        if record.__dict__.get(_DONE) is not _ESCAPED:
            _escape(record)
        return True


class EscapingFormatter(logging.Formatter):
    """A :class:`logging.Formatter` writing records escaped, each left as it was logged.

    Escaped as :class:`EscapingFilter` escapes them, in a copy: other handlers of the
    record (an application's JSON or Sentry handler) get its arguments and ``extra=``
    values as they were given. A record escaped already (by the filter of a logger of ours)
    is formatted as it is.
    """

    def format(self, record: logging.LogRecord) -> str:
        """The line of *record*, escaped; *record* itself is not changed."""
        return super().format(escaped(record))


def escaped(record: logging.LogRecord) -> logging.LogRecord:
    """*record* if it is escaped already, else an escaped copy of it (see :func:`_escape`)."""
    if record.__dict__.get(_DONE) is _ESCAPED:
        return record
    copy = object.__new__(type(record))
    copy.__dict__ = record.__dict__.copy()  # (its values are replaced, not changed)
    _escape(copy)
    return copy


def _escape(record: logging.LogRecord) -> None:
    """Escape *record* in place (see :class:`EscapingFilter`), and mark it so."""
    record.__dict__[_DONE] = _ESCAPED
    msg = record.msg
    record.msg = escape(msg, None) if type(msg) is str else escape(msg)
    args = record.args
    if isinstance(args, tuple):
        record.args = tuple(safe_arg(arg) for arg in args)
    elif isinstance(args, Mapping):
        record.args = {key: safe_arg(arg) for key, arg in args.items()}
    if record.exc_info and not record.exc_text:
        record.exc_text = indented(_FORMATTER.formatException(record.exc_info))
    elif record.exc_text:
        record.exc_text = indented(record.exc_text)
    if record.stack_info:
        record.stack_info = indented(record.stack_info)
    _escape_attributes(record)


def _escape_attributes(record: logging.LogRecord) -> None:
    """Escape, in place, the attributes of *record* a format shows as one value each."""
    attributes = vars(record)
    texts = tuple(map(attributes.get, _TEXT_ATTRIBUTES))
    # Exact types first: then neither hashing nor comparing runs code of the record's own.
    if not (_TEXT_TYPES.issuperset(map(type, texts)) and texts in _SAFE_TEXTS):
        _escape_texts(attributes, texts)
    if len(attributes) > _MOST_PLAIN_ATTRIBUTES:  # extra= added some: look at every one
        for key in attributes.keys() - _STANDARD_ATTRIBUTES:
            value = attributes[key]
            if type(value) is str:  # the common case, inline (a line per task has several)
                if len(value) <= MAX_LOGGED_CHARS and value.isprintable():
                    continue
            elif type(value) in _PLAIN_TYPES:
                continue
            attributes[key] = safe_arg(value)


def _escape_texts(attributes: dict[str, object], texts: tuple[object, ...]) -> None:
    """Escape the :data:`_TEXT_ATTRIBUTES` (*texts*) of a record; remember them if safe."""
    changed = False
    for key, value in zip(_TEXT_ATTRIBUTES, texts, strict=True):
        if value is None:
            continue
        if type(value) is not str or len(value) > MAX_LOGGED_CHARS or not value.isprintable():
            attributes[key] = escape(value)
            changed = True
    if not changed:
        if len(_SAFE_TEXTS) >= _MAX_SAFE_TEXTS:
            _SAFE_TEXTS.clear()
        _SAFE_TEXTS.add(texts)


_FORMATTER: Final = logging.Formatter()
_FILTER: Final = EscapingFilter()


def get_logger(name: str) -> logging.Logger:
    """The logger *name*, with the :class:`EscapingFilter` installed (once).

    Every module of the service gets its logger here, never from :func:`logging.getLogger`.
    """
    logger = logging.getLogger(name)
    logger.addFilter(_FILTER)  # a no-op when it is already there
    return logger


def library_logger(name: str) -> logging.Logger:
    """The logger *name* of a library, as it is: no filter of ours.

    Its records are the application's too, where the service runs in the application's own
    process; whatever the service does to it, it undoes.
    """
    return logging.getLogger(name)

r"""Log lines that input from outside cannot forge.

Anyone who can NOTIFY controls task names, uuids, arguments and error texts. Written raw, a
``\n`` in a uuid would start a line of its own that looks like the service's, a NUL or a
bidi override would garble the log. Here every value logged as an argument is escaped (each
non-printable character becomes ``\n``, ``\x00``, ``\u2028`` and so on) and cut short;
tracebacks and deliberate multi-line texts (:class:`Block`) follow their line with every
line indented, so that nothing of outside origin can begin a line at column 0.

Modules get their logger from :func:`get_logger`, which installs :class:`EscapingFilter`
(our records are escaped where they are made, for whichever handler gets them);
:func:`log_to` gives the process's handler an :class:`EscapingFormatter`, for records of
other loggers: it writes them escaped, and leaves them as they were logged for the
application's other handlers (a JSON or Sentry handler gets its ``extra=`` values whole).

A line's own words are the format's, never an argument's: an argument made of several values
(a list of jobs, a job's name and uuid) is a :class:`Phrase`, whose values are escaped and
cut one by one, so that neither the words after a long value nor the values after it are
cut away with it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import traceback
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Final, TextIO

from dispatcher.schema.log_fields import EVENT
from dispatcher.server.log_writer import MAX_QUEUED_CHARS, LineWriter

MAX_LOGGED_CHARS: Final = 255
"""Longest excerpt of one outside value written into a log line (in characters): the longest
task name, uuid or node id a message may hold (the schemas' ``maxLength``), so that a valid
one is written whole."""

MAX_REASON_CHARS: Final = 1000
"""Longest excerpt of a text naming several values, each cut short already (see
:class:`Excerpt`): why a message was rejected names every field that is wrong."""

MAX_BLOCK_LINES: Final = 200
"""Lines of a :class:`Block` or traceback kept (the first few and the last ones)."""

MAX_BLOCK_HEAD_LINES: Final = 20
"""Of the :data:`MAX_BLOCK_LINES` lines kept, how many are the first ones (the others are the
last: where the error is)."""

MAX_BLOCK_LINE_CHARS: Final = 1000
"""Longest line of a :class:`Block` or traceback."""

INDENT: Final = "  | "
"""What every following line of a block starts with."""

_SHORT_ESCAPES: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

_DONE: Final = "_dispatcher_escaped"
"""Record attribute set to :data:`_ESCAPED` once a record has been escaped (so it is escaped
only once)."""

_ESCAPED: Final = object()
"""The value of :data:`_DONE` in a record escaped: no other value counts (``extra=`` can set
the attribute, never to this)."""


def escape(value: object, limit: int | None = MAX_LOGGED_CHARS) -> str:
    r"""*value* as text on one line, printable, at most *limit* characters before escaping.

    Non-printable characters (control characters, NUL, line and paragraph separators, bidi
    overrides, unassigned code points, lone surrogates) become ``\n``, ``\x00``,
    ``\u2028``-style escapes. A longer text is cut at *limit* characters and says how many
    were cut; ``None`` keeps it whole.
    """
    text = safe_str(value)
    cut = 0
    if limit is not None and len(text) > limit:
        cut = len(text) - limit
        text = text[:limit]
    if not text.isprintable():
        text = "".join(char if char.isprintable() else _escaped_char(char) for char in text)
    return f"{text}... ({cut} more characters)" if cut else text


def _escaped_char(char: str) -> str:
    short = _SHORT_ESCAPES.get(char)
    if short is not None:
        return short
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def indented(text: str) -> str:
    r"""*text* with each line escaped and starting with :data:`INDENT`.

    Every line break Python knows (including ``\r``, ``\x0b`` and ``\u2028``) ends a line;
    of more than :data:`MAX_BLOCK_LINES` lines, the first :data:`MAX_BLOCK_HEAD_LINES` and the
    last ones are kept (a traceback's outermost frames and what was raised), with a line
    between them saying how many were left out.
    """
    lines = text.splitlines() or [""]
    if len(lines) > MAX_BLOCK_LINES:
        tail = MAX_BLOCK_LINES - MAX_BLOCK_HEAD_LINES
        left_out = f"({len(lines) - MAX_BLOCK_LINES} lines not shown)"
        lines = [*lines[:MAX_BLOCK_HEAD_LINES], left_out, *lines[-tail:]]
    return "\n".join(INDENT + escape(line, MAX_BLOCK_LINE_CHARS) for line in lines)


def cut_middle(text: str, limit: int) -> str:
    """*text*, or, when longer than *limit* characters, its start and its end.

    A line between them says how many characters were left out: ``[... 8135 characters left
    out ...]``. The start of an error names its type and says what went wrong; the end of a
    traceback, where it was raised. The result is at most *limit* characters long.
    """
    if len(text) <= limit:
        return text
    kept = max(limit - _CUT_MARK_CHARS, 0)
    head, tail = kept - kept // 2, kept // 2
    left_out = len(text) - head - tail
    return f"{text[:head]}\n[... {left_out} characters left out ...]\n{text[len(text) - tail :]}"


_CUT_MARK_CHARS: Final = 48
"""Room :func:`cut_middle` leaves for its line saying what it left out (and its breaks)."""


class Block:
    """A multi-line text to log on the lines that follow the message, each one indented.

    For the few messages that carry a text of many lines on purpose (a task's traceback, an
    import error)::

        logger.error("task %s failed: %s%s", name, error, Block(traceback_text))

    The argument renders as a line break followed by the text, every line escaped and
    prefixed with :data:`INDENT`; a plain argument would have its line breaks escaped.
    """

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        text = self.text.rstrip()
        return "\n" + indented(text) if text else ""

    def __repr__(self) -> str:
        return f"Block({self.text!r})"


class Whole(str):
    """A text given as a record attribute (``extra=``) that the escaping leaves whole.

    For a text of many lines meant for handlers that write it safely themselves (JSON, an
    error tracker): a failed task's traceback. The record's message shows it escaped; a text
    format shows an attribute only where its format string names it.
    """

    __slots__ = ()


class Excerpt:
    """An argument to log escaped and cut at *limit* characters, not :data:`MAX_LOGGED_CHARS`.

    For the texts that name many values, each cut short already (a rejected message's
    problems, one per wrong field)::

        logger.warning("rejected message: %s", Excerpt(reason, MAX_REASON_CHARS))
    """

    __slots__ = ("limit", "text")

    def __init__(self, text: object, limit: int) -> None:
        self.text = text
        self.limit = limit

    def __str__(self) -> str:
        return escape(self.text, self.limit)

    def __repr__(self) -> str:
        return f"Excerpt({self.text!r}, {self.limit})"


class Phrase:
    """An argument to log made of words of ours and values: each value escaped and cut alone.

    For an argument that names several values (a list of jobs, a task and its uuid)::

        logger.warning("abandoned: %s", Phrase("%s (uuid %s)", job.task, job.uuid))

    *text* is a %-format of the service's own, never an outside value; each of *args* is
    escaped and cut at :data:`MAX_LOGGED_CHARS` as a plain argument is (numbers are left as
    they are), and the text around them is kept whole, however long the values are.
    """

    __slots__ = ("args", "text")

    def __init__(self, text: str, *args: object) -> None:
        self.text = text
        self.args = args

    @classmethod
    def joined(cls, separator: str, phrases: Iterable[Phrase], more: int = 0) -> Phrase:
        """*phrases* one after the other, *separator* between them, then ``and N more``."""
        phrases = list(phrases)
        text = separator.replace("%", "%%").join(phrase.text for phrase in phrases)
        if more > 0:
            text += " and %d more"
        args = [arg for phrase in phrases for arg in phrase.args]
        return cls(text, *args, *((more,) if more > 0 else ()))

    def __str__(self) -> str:
        return self.text % tuple(_safe_arg(arg) for arg in self.args)

    def __repr__(self) -> str:
        return f"Phrase({self.text!r}, *{self.args!r})"


MAX_NAMES_LOGGED: Final = 20
"""Names (channels, queues) a log line lists before it says how many more."""


def named_list(names: Sequence[str], shown: int = MAX_NAMES_LOGGED) -> Phrase:
    """*names* for a log line, ``a, b, c``: the first *shown*, then ``and N more``."""
    return Phrase.joined(", ", (Phrase("%s", name) for name in names[:shown]), len(names) - shown)


def _safe_arg(value: object) -> object:
    if type(value) is str and len(value) <= MAX_LOGGED_CHARS and value.isprintable():
        return value  # the common case, first: nothing to escape or cut
    kind = type(value)
    if kind in _NUMBERS:
        return value
    # A subclass's own __str__ or __format__ may say anything: its value is the number.
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if kind is Block or kind is Excerpt or kind is Phrase:
        return str(value)
    return escape(value)


_NUMBERS: Final = frozenset({int, float, bool})
"""Types of values written as they are (exactly these: not subclasses)."""


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
    left alone; a :class:`Block` becomes indented lines); the message itself is escaped
    whole; an exception or stack trace is rendered into indented, escaped lines. Every
    other attribute a format can show is escaped and cut as an argument is: the logger's
    name and the level's name, the thread's, process's and asyncio task's names, the
    function, module and file names, and whatever ``extra=`` added. Task code chooses them
    all (``logging.getLogger(any_text)``, ``logging.addLevelName()``, a thread's name).
    Never drops a record.
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
        record.args = tuple(_safe_arg(arg) for arg in args)
    elif isinstance(args, Mapping):
        record.args = {key: _safe_arg(arg) for key, arg in args.items()}
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
            attributes[key] = _safe_arg(value)


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


class _ServiceHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler :func:`log_to` puts on the root logger (told apart from the application's).

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
        record = logging.LogRecord(
            "dispatcher.service",
            logging.WARNING,
            __file__,
            0,
            "%s dropped: the log's reader fell behind (more than %d characters waited)",
            (counted(number, "log line"), MAX_QUEUED_CHARS),
            None,
        )
        record.__dict__[EVENT] = "log_lines_dropped"
        return self.format(record) + self.terminator


LAST_LINES_WAIT: Final = 2.0
"""Seconds a service that stops waits, at most, for its last log lines to be written: when
the log's reader does not read, they are lost rather than hold the stop."""

_HANDLERS: Final[weakref.WeakSet[_ServiceHandler]] = weakref.WeakSet()
"""Every :class:`_ServiceHandler` of this process."""

_DROPPED_BEFORE: Final = [0]
"""Log lines dropped by the background writers that ended."""


def log_lines_dropped() -> int:
    """How many log lines the service's handler dropped in this process (its reader behind).

    Counts the lines of :func:`logs_written_in_background`'s writers, never the ones an
    application's own handlers may lose.
    """
    writing = sum(handler.writer.dropped for handler in list(_HANDLERS) if handler.writer)
    return _DROPPED_BEFORE[0] + writing


@contextlib.contextmanager
def logs_written_in_background() -> Iterator[None]:
    """Within the block, the service's handler writes from a thread of its own.

    For the service's main process while it runs (its event loop must never wait for the
    log's reader): a record's line is handed to a
    :class:`~dispatcher.server.log_writer.LineWriter`, and dropped when too many wait (see
    :data:`~dispatcher.server.log_writer.MAX_QUEUED_CHARS`). When the block ends, what waits
    is written, for :data:`LAST_LINES_WAIT` seconds at most, and each record is written as
    it comes again (unless the writing did not end in time: it then goes on in the
    background). Only the handler of :func:`log_to` is concerned: an application's own
    handlers write as the application set them up.
    """
    root = logging.getLogger()
    started = [h for h in root.handlers if isinstance(h, _ServiceHandler) and h.start_writer()]
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


os.register_at_fork(after_in_child=_forget_writers)


def library_logger(name: str) -> logging.Logger:
    """The logger *name* of a library, as it is: no filter of ours.

    Its records are the application's too, where the service runs in the application's own
    process; whatever the service does to it, it undoes.
    """
    return logging.getLogger(name)


def log_to(stream: TextIO, level: int, fmt: str | logging.Formatter) -> None:
    """Send the process's log records to *stream*, every one escaped, unless the app has a say.

    The root logger gets a handler writing to *stream* with an :class:`EscapingFormatter`,
    which also covers records of loggers that are not ours (libraries, task code) without
    changing them for the application's other handlers, and the level *level*. The handler
    an earlier call put there is replaced (a worker inherits the service's). *fmt* is its
    format string, or a formatter that escapes as it does (a JSON one).

    Handlers the application put on the root logger (Django's ``LOGGING``, a ``dictConfig``
    or ``basicConfig`` a task module runs when imported) are kept, and the root logger then
    gets no handler of ours: the application's config says how records are written, ours
    among them (escaped where they are made: see :func:`get_logger`), and *level* is the
    level of the ``dispatcher`` loggers only.
    """
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _ServiceHandler)]:
        root.removeHandler(handler)
        handler.close()
    if root.handlers:
        logging.getLogger("dispatcher").setLevel(level)
        return
    handler = _ServiceHandler(stream)
    handler.setFormatter(_formatter(fmt))
    root.addHandler(handler)
    root.setLevel(level)


@contextlib.contextmanager
def root_left_to_the_app() -> Iterator[None]:
    """Within the block, the root logger has no handler of :func:`log_to`'s: the app's to set up.

    For importing the application's code (the task modules, ``worker.class``) in a process
    that has the service's handler already: the fork server, forked from the service's
    process once its logging was set up, and a worker. A ``basicConfig()`` run on import
    does nothing where the root logger has a handler; within the block it sets the app's
    logging up as in a process of its own. Records made meanwhile are still written by the
    service's handler (as :data:`logging.lastResort`, used while the root logger has none).

    When the block ends, the service's handler goes back on the root logger if that still
    has none; else the app's handlers stay, alone, and the level the root logger had is the
    level of the ``dispatcher`` loggers (as :func:`log_to` leaves them).
    """
    root = logging.getLogger()
    ours = [handler for handler in root.handlers if isinstance(handler, _ServiceHandler)]
    if not ours:
        yield
        return
    level = root.level
    for handler in ours:
        root.removeHandler(handler)
    last_resort = logging.lastResort
    logging.lastResort = ours[0]
    try:
        yield
    finally:
        logging.lastResort = last_resort
        if root.handlers:
            logging.getLogger("dispatcher").setLevel(level)
            for handler in ours:
                handler.close()
        else:
            for handler in ours:
                root.addHandler(handler)


def is_service_handler(handler: logging.Handler) -> bool:
    """Tell whether *handler* is one :func:`log_to` made."""
    return isinstance(handler, _ServiceHandler)


def _formatter(fmt: str | logging.Formatter) -> logging.Formatter:
    return fmt if isinstance(fmt, logging.Formatter) else EscapingFormatter(fmt)


def set_apart(name: str, stream: TextIO, level: int, fmt: str | logging.Formatter) -> None:
    """Have the logger *name* write to *stream* alone, whatever logging config follows.

    For a worker's own log, in the process where task code runs: the logger gets a handler
    of its own, and is taken out of the logging module's registry (given a manager of its
    own), so that neither :func:`logging.config.dictConfig` (which disables every logger it
    finds unless told not to, as Django's ``LOGGING`` does), nor ``basicConfig(force=True)``
    (which replaces the root logger's handlers), nor :func:`logging.disable` reaches it.
    ``getLogger(name)`` gives a new logger from then on: the application's.
    """
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_formatter(fmt))
    logger = logging.getLogger(name)
    manager = logging.Manager(logging.root)
    manager.loggerDict[name] = logger
    logging.Logger.manager.loggerDict.pop(name, None)
    logger.manager = manager
    logger.handlers = [handler]
    logger.propagate = False
    logger.disabled = False
    logger.setLevel(level)  # (clears its cache of enabled levels too)


@contextlib.contextmanager
def lean_records() -> Iterator[None]:
    """Within the block, log records do not look for the file, line and function that made them.

    Finding them is most of what a record costs beyond its formatting (the logging HOWTO's
    "Optimization"), and the service logs a line per task. For a process the service owns,
    which runs no code of the application's and shows no such field: the main process of
    ``dispatcher-standalone``, once its fork server is forked (never a process the service is
    embedded in, nor a worker). A record still has every attribute a format may show
    (``pathname`` is ``(unknown file)``, ``lineno`` 0, ``funcName`` ``(unknown function)``;
    thread and process as always). What was there is put back when the block ends.
    """
    saved = logging._srcfile
    logging._srcfile = None
    try:
        yield
    finally:
        logging._srcfile = saved


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (its type's name when it has none)."""
    return (safe_str(exc).strip().splitlines() or [type(exc).__name__])[0]


def safe_str(value: object) -> str:
    """``str(value)``, or a note saying it could not be had.

    A ``__str__`` is code: a task's exception or return value may hold one that raises,
    even ``SystemExit``, which must not end the worker reporting it.
    """
    if type(value) is str:
        return value
    try:
        return str(value)
    except BaseException as failed:
        return f"<str() failed: {type(failed).__name__}>"


def describe_exception(exc: BaseException) -> str:
    """``Type: message`` for *exc*, whatever its ``__str__`` does."""
    return f"{type(exc).__name__}: {safe_str(exc)}"


def counted(number: int, noun: str, plural: str | None = None) -> str:
    """*number* and *noun*, in the plural unless it is one: ``1 job``, ``3 jobs``."""
    return f"{number} {noun if number == 1 else plural or noun + 's'}"

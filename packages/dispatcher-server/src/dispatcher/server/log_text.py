r"""Outside values as text a log line can hold: escaped, cut short, on one line.

Anyone who can NOTIFY controls task names, uuids, arguments and error texts. Written raw, a
``\n`` in a uuid would start a line of its own that looks like the service's, a NUL or a
bidi override would garble the log. :func:`escape` makes each non-printable character an
escape (``\n``, ``\x00``, ``\u2028`` and so on) and cuts the text short; :func:`indented`
writes a text of many lines (a traceback) on lines that all begin with :data:`INDENT`, so
that nothing of outside origin can begin a line at column 0. The other helpers say what an
error or a number of things is, whatever their ``__str__`` does.
"""

from __future__ import annotations

from typing import Final

MAX_LOGGED_CHARS: Final = 255
"""Longest excerpt of one outside value written into a log line (in characters): the longest
task name, uuid or node id a message may hold (the schemas' ``maxLength``), so that a valid
one is written whole."""

MAX_REASON_CHARS: Final = 1000
"""Longest excerpt of a text naming several values, each cut short already (see
:class:`~dispatcher.server.log_arguments.Excerpt`): why a message was rejected names every
field that is wrong."""

MAX_BLOCK_LINES: Final = 200
"""Lines of a :class:`~dispatcher.server.log_arguments.Block` or traceback kept (the first
few and the last ones)."""

MAX_BLOCK_HEAD_LINES: Final = 20
"""Of the :data:`MAX_BLOCK_LINES` lines kept, how many are the first ones (the others are the
last: where the error is)."""

MAX_BLOCK_LINE_CHARS: Final = 1000
"""Longest line of a :class:`~dispatcher.server.log_arguments.Block` or traceback."""

INDENT: Final = "  | "
"""What every following line of a block starts with."""

_SHORT_ESCAPES: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


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
    """``Type: message`` for *exc*, whatever its ``__str__`` does; ``Type`` alone without one."""
    text = safe_str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def counted(number: int, noun: str, plural: str | None = None) -> str:
    """*number* and *noun*, in the plural unless it is one: ``1 job``, ``3 jobs``."""
    return f"{number} {noun if number == 1 else plural or noun + 's'}"

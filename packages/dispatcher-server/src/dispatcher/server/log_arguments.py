"""What a log call may pass besides plain values, and how each argument is made safe to write.

A text of many lines to write on the lines that follow (:class:`Block`), a text cut at a
limit of its own (:class:`Excerpt`), words of ours with values (:class:`Phrase`), a record
attribute left whole for handlers that write it safely (:class:`Whole`); :func:`safe_arg`
makes any argument safe to write.

A line's own words are the format's, never an argument's: an argument made of several values
(a list of jobs, a job's name and uuid) is a :class:`Phrase`, whose values are escaped and
cut one by one, so that neither the words after a long value nor the values after it are
cut away with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

from dispatcher.server.log_text import MAX_LOGGED_CHARS, escape, indented


class Block:
    """A multi-line text to log on the lines that follow the message, each one indented.

    For the few messages that carry a text of many lines on purpose (a task's traceback, an
    import error)::

        logger.error("task %s failed: %s%s", name, error, Block(traceback_text))

    The argument renders as a line break followed by the text, every line escaped and
    prefixed with :data:`~dispatcher.server.log_text.INDENT`; a plain argument would have its
    line breaks escaped.
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
        return self.text % tuple(safe_arg(arg) for arg in self.args)

    def __repr__(self) -> str:
        return f"Phrase({self.text!r}, *{self.args!r})"


MAX_NAMES_LOGGED: Final = 20
"""Names (channels, queues) a log line lists before it says how many more."""


def named_list(names: Sequence[str], shown: int = MAX_NAMES_LOGGED) -> Phrase:
    """*names* for a log line, ``a, b, c``: the first *shown*, then ``and N more``."""
    return Phrase.joined(", ", (Phrase("%s", name) for name in names[:shown]), len(names) - shown)


MAX_PER_LINE: Final = 20
"""Values (uuids, jobs) one line names when a log names every one of many, a line per few."""


def in_lines(phrases: Sequence[Phrase], per_line: int = MAX_PER_LINE) -> list[tuple[int, Phrase]]:
    """*phrases* in lines of *per_line*, for a log that must name every one of them.

    Each line's phrases are joined with ``, ``; each comes with how many it holds. Lines
    of a readable length (a single line of thousands of values is cut by what reads the
    log), and none of them held back: no rate limit applies to such a list.
    """
    return [
        (len(part), Phrase.joined(", ", part))
        for part in (
            phrases[first : first + per_line] for first in range(0, len(phrases), per_line)
        )
    ]


def safe_arg(value: object) -> object:
    """*value* as it is written as an argument: escaped and cut, but for numbers and our types.

    Numbers are left as they are (a subclass of one becomes the number); a :class:`Block`,
    :class:`Excerpt` or :class:`Phrase` becomes its text; anything else is escaped and cut
    (:func:`~dispatcher.server.log_text.escape`).
    """
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

"""The values ``dispatcherctl``'s options take: each checked, its error naming what it got.

argparse prefixes each error with the option's name (``argument --timeout: ...``).
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, Final

from dispatcher.control import MAX_CONTROL_TIMEOUT
from dispatcher.schema import LOG_LEVELS, DecodeError, decode_json

SHOWN_CHARACTERS: Final = 80
"""Characters of a refused value quoted in the error (a long one is cut short)."""


def json_list(text: str) -> list[Any]:
    """An argument that must be a JSON array."""
    value = _json(text)
    if not isinstance(value, list):
        raise argparse.ArgumentTypeError(f"expected a JSON array, got {text!r}")
    return value


def json_object(text: str) -> dict[str, Any]:
    """An argument that must be a JSON object."""
    value = _json(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def seconds(text: str) -> float:
    """An argument that must be a number of seconds: finite, at least 0."""
    value = _number(text)
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a number of seconds (0 or more), got {text!r}")
    return value


def seconds_up_to(high: int) -> Callable[[str], float]:
    """An argument that must be a number of seconds from 0 to *high* (a whole number)."""
    days = f" ({high // 86400} days)" if high % 86400 == 0 else ""

    def parse(text: str) -> float:
        value = _number(text)
        if not 0 <= value <= high:
            raise argparse.ArgumentTypeError(
                f"expected a number of seconds from 0 to {high}{days}, got {text!r}"
            )
        return value

    return parse


def positive_seconds(text: str) -> float:
    """An argument that must be a number of seconds above 0, and at most a year.

    That is :data:`~dispatcher.control.MAX_CONTROL_TIMEOUT`, the longest wait for replies.
    """
    value = _number(text)
    if not 0 < value <= MAX_CONTROL_TIMEOUT:
        raise argparse.ArgumentTypeError(
            f"expected a number of seconds above 0 and at most {MAX_CONTROL_TIMEOUT} "
            f"(365 days), got {text!r}"
        )
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def count(text: str) -> int:
    """An argument that must be a whole number, at least 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number (0 or more), got {text!r}")
    return value


def _json(text: str) -> Any:
    if not _is_utf8(text):
        raise argparse.ArgumentTypeError(NOT_UTF8)
    try:
        return decode_json(text)
    except DecodeError as exc:  # also too deep for the decoder, NaN, 1e400
        raise argparse.ArgumentTypeError(f"{exc}: {shown(text)}") from None


def shown(text: str) -> str:
    """*text* quoted for an error message, cut to :data:`SHOWN_CHARACTERS`."""
    if len(text) <= SHOWN_CHARACTERS:
        return repr(text)
    return repr(text[:SHOWN_CHARACTERS]) + f"... ({len(text)} characters)"


def text_problem(text: str) -> str | None:
    """Say why *text* cannot name a job, a task or a queue; ``None`` when it can.

    Empty text is refused: an empty shell variable (``--uuid "$U"``) must not turn a filter
    into no filter. So are a NUL character and lone surrogates (bytes of the command line
    that are not UTF-8), which a PostgreSQL ``text`` value cannot hold.
    """
    if not text:
        return "must not be empty"
    if "\x00" in text:
        return f"must not hold a NUL character, got {shown(text)}"
    if not _is_utf8(text):
        return f"{NOT_UTF8}, got {shown(text)}"
    return None


NOT_UTF8: Final = "must be UTF-8 text (the command line holds bytes that are not)"
"""Why text holding lone surrogates is refused: bytes of the command line that are not UTF-8
(Python reads them as such), which no message nor database text can hold."""


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Text(argparse.Action):
    """Stores a name or uuid given on the command line, refusing what :func:`text_problem` does.

    The error names the option (``argument --uuid: must not be empty``), with exit status 2.
    """

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        """Check *values* (one string) and store it."""
        if not isinstance(values, str):
            raise argparse.ArgumentError(self, f"expected one value, got {values!r}")
        problem = text_problem(values)
        if problem is not None:
            raise argparse.ArgumentError(self, problem)
        setattr(namespace, self.dest, values)


def seconds_between(low: float, high: float) -> Callable[[str], float]:
    """An argument that must be a number of seconds from *low* to *high*."""

    def parse(text: str) -> float:
        value = _number(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"must be between {low:g} and {high:g} seconds, got {text!r}"
            )
        return value

    return parse


def count_between(low: int, high: int) -> Callable[[str], int]:
    """An argument that must be a whole number from *low* to *high*."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {text!r}")
        return value

    return parse


def own_log_level(text: str) -> str:
    """A level name for ``--log-level``, upper-cased when it is one (else shown as given)."""
    return text.upper() if text.upper() in LOG_LEVELS else text


def log_level(text: str) -> str | int:
    """A level for ``set_log_level``: a whole number, or a level name (upper-cased)."""
    if text.strip().isdigit():
        return int(text)
    name = text.strip().upper()
    if name not in logging.getLevelNamesMapping():
        raise argparse.ArgumentTypeError(
            f"unknown log level {text!r} (expected a whole number, 0 or more, or one of "
            f"{', '.join(LOG_LEVELS)})"
        )
    return name

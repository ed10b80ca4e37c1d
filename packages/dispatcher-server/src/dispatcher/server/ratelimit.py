"""Log lines that repeat under load, limited to a few per second."""

from __future__ import annotations

import logging
import re
import time
import traceback
import weakref
from collections.abc import Callable, Mapping
from typing import Final

from dispatcher.server.log_arguments import Block
from dispatcher.server.log_text import counted, escape


class RateLimitedLog:
    """Emits at most *per_second* lines a second; says how many it held back.

    *window*: the seconds the allowance of *per_second* lines is for, when not one (a line
    that recurs over minutes rather than in bursts).
    """

    def __init__(
        self,
        logger: logging.Logger,
        level: int,
        per_second: int = 10,
        clock: Callable[[], float] = time.monotonic,
        *,
        window: float = 1.0,
    ) -> None:
        self._logger = logger
        self._level = level
        self._per_second = per_second
        self._clock = clock
        self._length = window
        self._window = -1.0
        self._emitted = 0
        self._suppressed = 0
        self._last: tuple[str, tuple[object, ...]] = ("", ())
        _instances.add(self)

    def log(self, message: str, *args: object, extra: Mapping[str, object] | None = None) -> bool:
        """Log ``message % args``, unless this second's allowance is used up.

        *extra*: the record's attributes (as :meth:`logging.Logger.log` takes them).
        Returns whether it was logged (``False``: held back, and counted).
        """
        now = self._clock()
        if now - self._window >= self._length:
            self._window, self._emitted = now, 0
        if self._emitted >= self._per_second:
            self._suppressed += 1
            self._last = (message, args)
            return False
        self._emitted += 1
        if self._suppressed:
            message += " (%s suppressed)"
            args = (*args, counted(self._suppressed, "similar line"))
            self._suppressed = 0
        self._logger.log(self._level, message, *args, extra=extra)
        return True

    def flush(self, now: bool = False) -> None:
        """Say how many lines were held back, once their second is over, if no line did.

        With *now*, without waiting for the second to end (the service is stopping).
        """
        if self._suppressed and (now or self._clock() - self._window >= self._length):
            count, self._suppressed = self._suppressed, 0
            message, args = self._last
            try:
                last = message % args
            except (TypeError, ValueError):
                last = message
            self._logger.log(
                self._level,
                "%s suppressed (the last: %s)",
                counted(count, "similar line"),
                escape(last, 120),
            )


_NUMBERS: Final = re.compile(r"\d+(?:\.\d+)?")
REPEAT_WINDOW: Final = 60.0
"""Seconds during which a failure that goes on for the same cause is logged once
(:class:`FailureLog`)."""


class FailureLog:
    """Says that something keeps failing: once per cause, then once per *window* at most.

    For the attempts of one connection (or one periodic step) that fail again and again
    while the database is out of reach or has no connection slot left: each attempt used
    to log a line (over a fleet, a thousand lines in two minutes, for one cause). The
    first failure is logged; further ones for the same *cause* are counted (and logged at
    DEBUG), and logged again (with that count) once *window* seconds have passed; a
    failure for another cause is logged at once (numbers aside: ``waiting 2.1 s more``
    and ``waiting 4.3 s more`` are one cause). :meth:`ended` (the thing worked again)
    starts afresh.
    """

    def __init__(
        self,
        logger: logging.Logger,
        level: int = logging.WARNING,
        *,
        window: float = REPEAT_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._level = level
        self._window = window
        self._clock = clock
        self._cause: str | None = None
        self._logged_at = 0.0
        self._repeats = 0

    @property
    def failing(self) -> bool:
        """Whether a failure was logged and nothing worked since (see :meth:`ended`)."""
        return self._cause is not None

    def log(self, cause: str, message: str, *args: object) -> bool:
        """Log ``message % args`` unless it repeats the same *cause* within the window.

        Returns whether it was logged (``False``: counted, said with the next line).
        """
        now = self._clock()
        cause = _NUMBERS.sub("#", cause)
        if cause == self._cause and now - self._logged_at < self._window:
            self._repeats += 1
            self._logger.debug(message, *args)
            return False
        if self._repeats and cause == self._cause:
            message += " (%s since the last line)"
            args = (*args, counted(self._repeats, "similar failure"))
        elif self._repeats:
            message += " (after %s like the last line)"
            args = (*args, counted(self._repeats, "more failure"))
        self._cause, self._logged_at, self._repeats = cause, now, 0
        self._logger.log(self._level, message, *args)
        return True

    def ended(self) -> int:
        """It worked again: the next failure is logged at once; returns the failures held back."""
        repeats = self._repeats
        self._cause, self._repeats = None, 0
        return repeats


_instances: weakref.WeakSet[RateLimitedLog] = weakref.WeakSet()
"""Every rate-limited log of the process, for :func:`flush_suppressed`."""


def flush_suppressed(now: bool = False) -> None:
    """Have every rate-limited log say how many lines it held back after its last one.

    Without it, a burst followed by silence would never report what it held back (a count
    is only added to the next line logged). The service calls it every second, and with
    *now* when it stops.
    """
    for log in list(_instances):
        log.flush(now)


TRACEBACK_INTERVAL: Final = 60.0
"""Seconds between two full tracebacks at ERROR for the same site."""

_EXCERPT: Final = 160
"""Characters kept of an exception's text or a detail (escaped again by a log filter)."""


class InternalErrorLog:
    """Reports bugs met while handling one message, without flooding the log.

    Each report is one rate-limited ERROR line ``internal error in <site>: <Type>: <msg>``
    (values from outside escaped and cut short); the full traceback follows it at most once
    per site every :data:`TRACEBACK_INTERVAL` seconds, and always at DEBUG. Counting the
    error is the caller's job.
    """

    def __init__(
        self,
        logger: logging.Logger,
        per_second: int = 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._clock = clock
        self._lines = RateLimitedLog(logger, logging.ERROR, per_second, clock)
        self._last_traceback: dict[str, float] = {}

    def report(self, site: str, exc: BaseException, detail: str = "") -> None:
        """Log *exc*, raised while handling one message in *site* (``detail``: context)."""
        args = (
            site,
            type(exc).__name__,
            escape(exc, _EXCERPT),
            f" ({escape(detail, _EXCERPT)})" if detail else "",
        )
        now = self._clock()
        last = self._last_traceback.get(site)
        if last is None or now - last >= TRACEBACK_INTERVAL:
            self._last_traceback[site] = now
            self._logger.error(_LINE + "%s", *args, _traceback(exc))
            return
        self._lines.log(_LINE, *args)
        if self._logger.isEnabledFor(logging.DEBUG):
            self._logger.debug(_LINE + "%s", *args, _traceback(exc))


_LINE: Final = "internal error in %s: %s: %s%s"


def _traceback(exc: BaseException) -> Block:
    return Block("".join(traceback.format_exception(exc)))

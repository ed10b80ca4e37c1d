"""Log lines that repeat under load, limited to a few per second."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class RateLimitedLog:
    """Emits at most *per_second* lines a second; says how many it held back."""

    def __init__(
        self,
        logger: logging.Logger,
        level: int,
        per_second: int = 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._level = level
        self._per_second = per_second
        self._clock = clock
        self._window = -1.0
        self._emitted = 0
        self._suppressed = 0

    def log(self, message: str, *args: object) -> None:
        """Log ``message % args``, unless this second's allowance is used up."""
        now = self._clock()
        if now - self._window >= 1.0:
            self._window, self._emitted = now, 0
        if self._emitted >= self._per_second:
            self._suppressed += 1
            return
        self._emitted += 1
        if self._suppressed:
            message += " (%d similar lines suppressed)"
            args = (*args, self._suppressed)
            self._suppressed = 0
        self._logger.log(self._level, message, *args)

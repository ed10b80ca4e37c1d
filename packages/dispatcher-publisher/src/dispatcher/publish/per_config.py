"""What the SDK works out once per config, kept for the few configs used last.

A process publishes under one config, or a few (``dispatcher.config.using``): switching
between them keeps what each one's brokers, routes and checks cost to work out.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Final, Generic, TypeVar

from dispatcher.config import Settings
from dispatcher.config.forking import at_fork

T = TypeVar("T")

KEPT_CONFIGS: Final = 8
"""Configs whose values are kept; the one used longest ago is forgotten past that."""


class PerConfig(Generic[T]):
    """A value per config (told apart by identity: a config never changes), made on first use."""

    def __init__(self, make: Callable[[Settings], T]) -> None:
        self._make = make
        self._last: tuple[Settings, T] | None = None
        """The config asked for last and its value: the common case, one look-up."""
        self._kept: list[tuple[Settings, T]] = []
        """The configs asked for, the one asked for last first."""
        # Re-entrant: a signal handler (or a __del__) submitting in the thread it
        # interrupted may find that thread holding it.
        self._lock = threading.RLock()
        _made.append(self)

    def get(self, settings: Settings) -> T:
        """The value of *settings*, made now if it has none (or was forgotten)."""
        last = self._last
        if last is not None and last[0] is settings:
            return last[1]
        with self._lock:
            found = next((kept for kept in self._kept if kept[0] is settings), None)
            if found is None:
                found = (settings, self._make(settings))
            else:
                self._kept.remove(found)
            self._kept.insert(0, found)
            del self._kept[KEPT_CONFIGS:]
            self._last = found
            return found[1]


_made: list[PerConfig[Any]] = []


def _after_fork_in_child() -> None:
    # A lock held by another thread at the fork would stay held for ever in the child.
    for per_config in _made:
        per_config._lock = threading.RLock()


at_fork(after_in_child=_after_fork_in_child)

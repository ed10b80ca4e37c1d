"""The signals a worker reserves, kept as it set them up whatever its tasks do to them.

A task that ignores a cancel signal (``signal.signal(SIGRTMIN + 1, SIG_IGN)``), blocks one
(``pthread_sigmask``), ignores SIGTERM, or leaves an alarm pending (``signal.alarm(2)``)
would have every later task of its worker end ``killed`` rather than ``timeout``, lose its
output on a stop, or be killed by SIGALRM. After each task the worker puts back its
handlers, unblocks its signals and cancels any alarm (``ITIMER_REAL``), with a warning (once
per worker) that names what the task changed. The check costs about a microsecond a task:
a lookup per handler, and two system calls that check and put back at once.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping
from typing import Any, Final

from dispatcher.server.logsafe import get_logger

logger = get_logger("dispatcher.worker")

Handler = Callable[[int, Any], Any] | int | signal.Handlers

_raw: Final[Any] = getattr(signal, "_signal", signal)
"""The C module under :mod:`signal`, whose functions return plain numbers: the wrappers of
``getsignal`` and ``pthread_sigmask`` turn them into enum members, at 3 µs a handler."""
_getsignal: Final = _raw.getsignal
_sigmask: Final = _raw.pthread_sigmask
_alarm: Final = signal.alarm
_UNBLOCK: Final = int(signal.SIG_UNBLOCK)


def signal_name(number: int) -> str:
    """``SIGTERM``, ``SIGRTMIN+3``: the name of signal *number*."""
    if signal.SIGRTMIN < number <= signal.SIGRTMAX:
        return f"SIGRTMIN+{number - signal.SIGRTMIN}"
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class SignalKeeper:
    """Installs the worker's *handlers*, and puts them back after each task (:meth:`check`)."""

    def __init__(self, handlers: Mapping[int, Handler]) -> None:
        self._numbers = tuple(map(int, handlers))  # (plain numbers are quicker to pass)
        self._handlers = tuple(handlers.values())
        self._reserved = frozenset(self._numbers)
        self._warned = False

    def install(self) -> None:
        """Install the handlers; unblock their signals."""
        for number, handler in zip(self._numbers, self._handlers, strict=True):
            signal.signal(number, handler)
        _sigmask(_UNBLOCK, self._numbers)

    def check(self, task: object, uuid: object) -> None:
        """Put back what task *task* (uuid *uuid*), which has just ended, changed."""
        changed_handlers = tuple(map(_getsignal, self._numbers)) != self._handlers
        blocked = _sigmask(_UNBLOCK, self._numbers)
        alarm = _alarm(0)
        if changed_handlers or alarm or (blocked and not blocked.isdisjoint(self._reserved)):
            self._put_back(task, uuid, changed_handlers, blocked, alarm)

    def _put_back(
        self, task: object, uuid: object, handlers: bool, blocked: set[Any], alarm: int
    ) -> None:
        changes = []
        if handlers:
            changed = []
            for number, ours in zip(self._numbers, self._handlers, strict=True):
                if _getsignal(number) is not ours:
                    signal.signal(number, ours)
                    changed.append(number)
            changes.append("handlers of " + ", ".join(map(signal_name, sorted(changed))))
        unblocked = sorted(int(number) for number in blocked if number in self._reserved)
        if unblocked:
            changes.append("blocked " + ", ".join(map(signal_name, unblocked)))
        if alarm:
            changes.append("alarm set")
        if not self._warned:
            self._warned = True
            logger.warning(
                "task %s (uuid %s) changed the worker's signals (%s): put back as the worker "
                "set them up, for the tasks that follow (said once per worker)",
                task,
                uuid,
                "; ".join(changes),
            )

"""The signals a worker relies on, kept as it set them up whatever its tasks do to them.

A task that ignores a cancel signal (``signal.signal(SIGRTMIN + 1, SIG_IGN)``), blocks one
(``pthread_sigmask``), ignores SIGTERM, or leaves an alarm pending (``signal.alarm(2)``)
would have every later task of its worker end ``killed`` rather than ``timeout``, lose its
output on a stop, or be killed by SIGALRM. Other signals' handlers change what later tasks
see without a word: SIGCHLD ignored has the kernel reap children at once (the next task's
``subprocess.run(["false"]).returncode`` is 0), SIGPIPE or SIGXFSZ at their default kill
the worker on the next write to a closed pipe (or past ``RLIMIT_FSIZE``), and SIGINT is
the service's (the worker ignores it). After each task the worker puts back its handlers
of the signals it reserves, the handlers :data:`KEPT` signals had when it started (after
the ``on_start`` hook), unblocks the reserved signals and cancels any alarm
(``ITIMER_REAL``), with a warning (once per worker) that names what the task changed.

Measured at 1.7 µs a task (on a 2-core machine): a lookup per handler (about 30 ns each),
and two system calls that check and put back at once. The ``ITIMER_PROF`` and
``ITIMER_VIRTUAL`` timers (a sampling profiler left running) are not checked: that would
take a system call each (0.7 µs for both, half as much again), so a task that leaves one
set may have a later CPU-bound task of its worker killed (``SIGPROF``, ``SIGVTALRM``).
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping
from typing import Any, Final

from dispatcher.server.log_arguments import Phrase
from dispatcher.server.log_records import get_logger

logger = get_logger("dispatcher.worker")

Handler = Callable[[int, Any], Any] | int | signal.Handlers

_raw: Final[Any] = getattr(signal, "_signal", signal)
"""The C module under :mod:`signal`, whose functions return plain numbers: the wrappers of
``getsignal`` and ``pthread_sigmask`` turn them into enum members, at 3 µs a handler."""
_getsignal: Final = _raw.getsignal
_sigmask: Final = _raw.pthread_sigmask
_alarm: Final = signal.alarm
_UNBLOCK: Final = int(signal.SIG_UNBLOCK)

KEPT: Final = tuple(
    int(number) for number in (signal.SIGINT, signal.SIGPIPE, signal.SIGCHLD, signal.SIGXFSZ)
)
"""Signals the worker does not reserve, whose handlers it keeps as they were at its start."""


def signal_name(number: int) -> str:
    """``SIGTERM``, ``SIGRTMIN+3``: the name of signal *number*."""
    if signal.SIGRTMIN < number <= signal.SIGRTMAX:
        return f"SIGRTMIN+{number - signal.SIGRTMIN}"
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class SignalKeeper:
    """Installs the worker's *handlers*, and puts them back after each task (:meth:`check`).

    And the handlers of :data:`KEPT` signals, as they are when :meth:`keep` is called.
    """

    def __init__(self, handlers: Mapping[int, Handler]) -> None:
        self._reserved_numbers = tuple(map(int, handlers))  # (plain numbers are quicker to pass)
        self._numbers = self._reserved_numbers
        self._handlers = tuple(handlers.values())
        self._reserved = frozenset(self._numbers)
        self._warned = False

    def install(self) -> None:
        """Install the handlers; unblock their signals."""
        for number, handler in zip(self._numbers, self._handlers, strict=True):
            signal.signal(number, handler)
        _sigmask(_UNBLOCK, self._reserved_numbers)

    def keep(self, hook: str) -> None:
        """Put back what the worker's *hook* (``on_start``) changed, then keep the rest as is.

        From then on, the handlers of :data:`KEPT` signals are put back as they are now.
        """
        self.check(hook, None)
        self._warned = False  # a task's changes are said too
        kept = tuple(number for number in KEPT if number not in self._reserved)
        self._numbers = self._reserved_numbers + kept
        self._handlers = self._handlers[: len(self._reserved_numbers)] + tuple(
            map(_getsignal, kept)
        )

    def check(self, task: object, uuid: object) -> None:
        """Put back what task *task* (uuid *uuid*), which has just ended, changed.

        With *uuid* ``None``, *task* is a worker hook's name.
        """
        changed_handlers = tuple(map(_getsignal, self._numbers)) != self._handlers
        blocked = _sigmask(_UNBLOCK, self._reserved_numbers)
        alarm = _alarm(0)
        if changed_handlers or alarm or (blocked and not blocked.isdisjoint(self._reserved)):
            who = (
                Phrase("worker hook %s", task)
                if uuid is None
                else Phrase("task %s (uuid %s)", task, uuid)
            )
            self._put_back(who, changed_handlers, blocked, alarm)

    def _put_back(self, who: Phrase, handlers: bool, blocked: set[Any], alarm: int) -> None:
        changes = []
        if handlers:
            changed = []
            for number, ours in zip(self._numbers, self._handlers, strict=True):
                if _getsignal(number) != ours:
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
                "%s changed the worker's signals (%s): put back as the worker set them up, for "
                "the tasks that follow (said once per worker)",
                who,
                Phrase("; ".join(changes)),  # (signal names: words of ours, kept whole)
            )

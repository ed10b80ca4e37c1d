"""Stop signals that come while a service starts: held, then acted on once, at one point.

From the command's first lines (before it imports its modules: see
:mod:`dispatcher.server.cli`), while the modules are imported and the fork server forked,
SIGINT and SIGTERM are held (blocked): an exception raised by a signal handler in the middle
of an import can come out as another one (Python wraps what a class's ``__set_name__``
raises, say), or not at all; and until a handler is installed, SIGTERM would kill the
process, or, sent to PID 1 of a container, be ignored. Where the service is about to run
(or sooner, between two steps of the start: :func:`stop_if_signalled`), the signals that
came are taken, without their handlers, and the start stops with one ``KeyboardInterrupt``
however many came (a terminal's SIGINT and a process manager's SIGTERM, say). From then on,
until the service installs its own handlers, SIGTERM (and SIGHUP) stop it as SIGINT does. A
config file that is not a regular file (a pipe, a terminal) is read with the signals let
through, since nothing else may end that read.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from typing import Final

_HANGUP_IGNORED: Final = signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
"""Whether the process was started with SIGHUP ignored (``nohup``): it stays ignored."""

STOP_SIGNALS: Final = frozenset(
    {signal.SIGINT, signal.SIGTERM} | (set() if _HANGUP_IGNORED else {signal.SIGHUP})
)
"""The signals that stop a service (SIGHUP: its terminal or ssh session closed, unless it
was started with SIGHUP ignored, as ``nohup`` does)."""

_INTERRUPTING: Final = tuple(STOP_SIGNALS - {signal.SIGINT})
"""The stop signals whose default action would end the process without a word: until the
service handles them, they raise ``KeyboardInterrupt`` as SIGINT does."""


@contextlib.contextmanager
def held_stop_signals() -> Iterator[Callable[[], None]]:
    """Hold :data:`STOP_SIGNALS` while the block runs; yield the function that releases them.

    Call it where the service is about to run: it raises ``KeyboardInterrupt`` once if a
    stop signal came meanwhile. The block's end releases them too (a signal that came then
    is dropped: the start is over either way) and restores the handlers of SIGTERM and
    SIGHUP.
    """
    previous = {number: signal.getsignal(number) for number in _INTERRUPTING}
    held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    for number in _INTERRUPTING:
        signal.signal(number, _interrupt)
    try:
        yield lambda: _release(held)
    finally:
        with contextlib.suppress(KeyboardInterrupt):
            _release(held)
        for number, handler in previous.items():
            if handler is not None:
                signal.signal(number, handler)


@contextlib.contextmanager
def stop_signals_allowed() -> Iterator[None]:
    """Let :data:`STOP_SIGNALS` act for the block, inside :func:`held_stop_signals`.

    For a read that may wait for ever (a config file that is a pipe). The signals raise
    ``KeyboardInterrupt`` in the block: it must import nothing.
    """
    held = signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def stop_if_signalled() -> None:
    """Raise ``KeyboardInterrupt`` if a held stop signal came (it stays pending, taken later).

    For the points of the start before the service is built where stopping costs least
    (before the fork server is forked, say): the release then takes the signal without
    raising again, the block being left by then.
    """
    if signal.sigpending() & STOP_SIGNALS:
        raise KeyboardInterrupt


def _release(held: set[int | signal.Signals]) -> None:
    """Restore the signal mask *held*; raise ``KeyboardInterrupt`` if a stop signal came."""
    came = signal.sigpending() & STOP_SIGNALS
    for number in came:
        signal.sigtimedwait({number}, 0)  # taken without its handler
    signal.pthread_sigmask(signal.SIG_SETMASK, held)
    if came:
        raise KeyboardInterrupt


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM or SIGHUP before the service handles it: stop as SIGINT does then."""
    raise KeyboardInterrupt

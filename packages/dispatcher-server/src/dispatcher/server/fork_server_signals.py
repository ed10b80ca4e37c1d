"""The signals the fork server ignores, and gives back to their defaults in each worker.

A worker's parent is the fork server. Task code that signals its parent
(``os.kill(os.getppid(), ...)``), as code written for another server's workers does to their
master (gunicorn's reopens its logs on SIGUSR1, quits on SIGQUIT, adds a worker on SIGTTIN),
signals the fork server, which each of these signals would end or stop at its default,
every worker with it: the tasks of the other workers too. The fork server ignores them
(:func:`ignore_stray_signals`); a worker it forks handles them as any process does by
default (:func:`give_back_defaults`), and so do the programs its tasks run, which inherit
what a worker ignores. Signals the fork server must still act on: SIGCHLD, the signal that
says the service has ended (which it checks, see :mod:`dispatcher.server.fork_server_loop`),
SIGKILL and SIGSTOP (which no process can ignore: the service replaces a fork server killed
or silent), and those a fault raises (SIGSEGV, SIGABRT...).
"""

from __future__ import annotations

import signal
from typing import Final


def _stray_signals() -> tuple[int, ...]:
    names = (
        "SIGINT",
        "SIGTERM",
        "SIGHUP",  # (the service's to handle: a terminal's, a process group's)
        "SIGQUIT",
        "SIGUSR1",
        "SIGALRM",
        "SIGVTALRM",
        "SIGPROF",
        "SIGIO",
        "SIGPWR",
        "SIGSTKFLT",
        "SIGXCPU",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
    )
    numbers = [int(getattr(signal, name)) for name in names if hasattr(signal, name)]
    if hasattr(signal, "SIGRTMIN"):  # (Linux)
        numbers.extend(range(signal.SIGRTMIN, signal.SIGRTMAX + 1))
    return tuple(numbers)


STRAY_SIGNALS: Final = _stray_signals()
"""Signals a fork server ignores: those whose default would end or stop it."""


def ignore_stray_signals() -> None:
    """In the fork server: ignore :data:`STRAY_SIGNALS`."""
    for number in STRAY_SIGNALS:
        signal.signal(number, signal.SIG_IGN)


def give_back_defaults() -> None:
    """In a worker the fork server forked: handle :data:`STRAY_SIGNALS` by their defaults."""
    for number in STRAY_SIGNALS:
        signal.signal(number, signal.SIG_DFL)

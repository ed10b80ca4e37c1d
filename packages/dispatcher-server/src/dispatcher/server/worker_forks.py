"""A worker's guard against a child that ``os.fork()`` made of it going on as a second worker.

A task or a hook may fork, and the child may return into the worker's code instead of
ending with ``os._exit()``: left to go on, it would report the end of the task as well, and
read the next requests on the same socket. The worker notes each fork in the child
(:func:`note_fork`, registered with ``os.register_at_fork()`` at its start) and ends such a
child where it comes back (:func:`exit_forked`). The worker's hooks are called through
:func:`call_hook`, which logs what one raises and checks for this.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from typing import Any, Final, NoReturn

from dispatcher.server.log_records import get_logger

logger = get_logger("dispatcher.worker")


def call_hook(hook: Callable[..., object], *args: Any) -> None:
    """Call the worker hook *hook* with *args*: one that raises is logged, the worker goes on."""
    try:
        hook(*args)
    except Exception:
        logger.exception("worker hook %s raised; the worker carries on", hook.__name__)
    finally:
        if FORKED[0]:
            exit_forked("worker hook %s", hook.__name__)


FORKED: Final = [False]
"""Whether this process is a child that ``os.fork()`` made of the worker (set in the child,
see :func:`note_fork`): a check cheaper than ``os.getpid()``, for every hook called."""


def note_fork() -> None:
    """Note, in a child that ``os.fork()`` made of the worker, that it is one (:data:`FORKED`)."""
    FORKED[0] = True


def exit_forked(what: str, *args: object) -> NoReturn:
    """End this process: a child that *what* forked, returning into the worker's code.

    Left to go on, it would be a second worker on the same socket: it would report the end
    of the task as well, and read the next requests. ``what`` and ``args`` are a log format.
    Called while a ``SystemExit`` propagates (``sys.exit(0)`` in the child), it exits with
    that status, as the child meant to, its standard streams flushed first.
    """
    leaving = sys.exc_info()[1]
    if isinstance(leaving, SystemExit):
        status = _exit_status(leaving)
    else:
        status = 1
        with contextlib.suppress(BaseException):
            logger.error(
                f"a process forked by {what} returned into the worker (pid %d): it exits "
                "(a forked child must end with os._exit())",
                *args,
                os.getpid(),
            )
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()
    os._exit(status)


def _exit_status(request: SystemExit) -> int:
    """The status a process ends with on *request*, as Python's own exit gives it."""
    code = request.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    with contextlib.suppress(BaseException):
        print(code, file=sys.stderr)  # as Python prints a message given to sys.exit()
    return 1

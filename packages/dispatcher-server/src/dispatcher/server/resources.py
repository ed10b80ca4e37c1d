"""The process's own resources running short: file descriptors, processes, threads.

A service at one of its limits must say which limit it reached, not blame the database or
a task: an attempt to connect that fails for want of a file descriptor or a thread is
reported as such (and retried like any failed connection), a worker that cannot be forked
names the process limit, and the file-descriptor limit is raised at start when the pool
needs more than the soft limit allows.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Final, ParamSpec, TypeVar

import psycopg

from dispatcher.server.log_records import get_logger
from dispatcher.server.log_text import first_line

logger = get_logger("dispatcher.service")

FDS_PER_WORKER: Final = 2
"""File descriptors the main process holds for each worker: its socket and its pidfd."""
FDS_BASE: Final = 64
"""File descriptors the main process needs besides: logs, the event loop, the fork server,
database connections, a worker being started."""
FDS_PER_SERVER: Final = 64
"""File descriptors for each server socket's clients (the local socket, the metrics port:
each serves at most 64 at once)."""

RAISED_LIMIT: Final = 65536
"""The soft file-descriptor limit a raise aims at (less when the hard limit is lower)."""

PROCESS_LIMIT: Final = (
    "the process limit reached? (RLIMIT_NPROC, ulimit -u, or the container's pids limit; "
    "threads count too)"
)
"""What a fork or a thread that cannot be started most likely ran into."""

_OUT_OF_FDS: Final = frozenset({errno.EMFILE, errno.ENFILE})


def fds_needed(max_workers: int, servers: int) -> int:
    """File descriptors the main process may need with *max_workers* and *servers* sockets."""
    return FDS_BASE + FDS_PER_WORKER * max_workers + FDS_PER_SERVER * servers


def fd_limit_text() -> str:
    """The soft file-descriptor limit, for messages: ``RLIMIT_NOFILE 1024, ulimit -n``."""
    if sys.platform == "win32":  # (dispatcherctl runs there; the service does not)
        return "the process's limit of open files"
    import resource  # (here: Windows has no such module)

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    shown = "unlimited" if soft == resource.RLIM_INFINITY else str(soft)
    return f"RLIMIT_NOFILE {shown}, ulimit -n"


def out_of_fds_text(number: int = errno.EMFILE) -> str:
    """Says that the process (or, for ``ENFILE``, the system) is out of file descriptors."""
    if number == errno.ENFILE:
        return "the system is out of file descriptors (its file table is full: fs.file-max)"
    return f"the service is out of file descriptors (its limit: {fd_limit_text()})"


def out_of_fds() -> bool:
    """Whether this process cannot open a file descriptor now (a probe: one ``dup``)."""
    try:
        os.close(os.dup(2))
    except OSError as exc:
        return exc.errno in _OUT_OF_FDS
    return False


def shortage_text(exc: BaseException) -> str | None:
    """*exc*'s line with the limit it most likely ran into; ``None`` if it ran into none.

    A ``RuntimeError`` about a thread (no thread could be started), an ``OSError`` for want
    of file descriptors.
    """
    if isinstance(exc, RuntimeError) and "thread" in str(exc):
        return f"{first_line(exc)}: {PROCESS_LIMIT}"
    if isinstance(exc, OSError) and exc.errno in _OUT_OF_FDS:
        return f"{out_of_fds_text(exc.errno)}: {first_line(exc)}"
    return None


def connect_failure(exc: Exception) -> Exception:
    """What an attempt to connect that raised *exc* failed for, as an exception to report.

    A ``RuntimeError`` (no thread could be started for the host name's lookup) and a
    failure for want of file descriptors (which psycopg reports as "connection is bad: no
    error details available") become an ``OSError`` that says which limit was reached:
    retried like any failed connection, and not blamed on the database. Anything else is
    *exc* itself.
    """
    text = shortage_text(exc)
    number = errno.EAGAIN if isinstance(exc, RuntimeError) else errno.EMFILE
    if text is None and isinstance(exc, RuntimeError):
        text = first_line(exc)
    elif text is None and not isinstance(exc, OSError) and out_of_fds():
        text = f"{out_of_fds_text()}: {first_line(exc)}"
    if text is None:
        return exc
    failure = OSError(text)  # (its errno set, but not shown: the text says it all)
    failure.errno = exc.errno if isinstance(exc, OSError) else number
    return failure


@contextlib.contextmanager
def shortages_named() -> Iterator[None]:
    """Around an attempt to connect: re-raise its failure as :func:`connect_failure` says."""
    try:
        yield
    except (psycopg.OperationalError, OSError, RuntimeError) as exc:
        failure = connect_failure(exc)
        if failure is exc:
            raise
        raise failure from exc


_P = ParamSpec("_P")
_T = TypeVar("_T")


def names_shortages(connect: Callable[_P, Awaitable[_T]]) -> Callable[_P, Awaitable[_T]]:
    """Decorates an async function that connects: see :func:`shortages_named`."""

    @functools.wraps(connect)
    async def connecting(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        with shortages_named():
            return await connect(*args, **kwargs)

    return connecting


def raise_fd_limit(needed: int) -> None:
    """Raise the soft ``RLIMIT_NOFILE`` if it is lower than *needed*.

    To the hard limit, or to :data:`RAISED_LIMIT` (or *needed*) when the hard limit is
    higher. Many servers do so: the soft limit is often 1024 while the hard one is far
    higher (the main process waits with epoll: descriptors past 1024 are no trouble). When
    the hard limit is lower than *needed* too, the soft one goes up to it, with a warning
    that names the limit: workers then fail to start (each a line) rather than the service.
    """
    if sys.platform == "win32":  # (the service refuses to start there)
        return
    import resource  # (here: Windows has no such module)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = max(needed, RAISED_LIMIT)
    if hard != resource.RLIM_INFINITY:
        target = min(target, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:
            logger.warning("cannot raise the file-descriptor limit: %s", first_line(exc))
            target = soft
        else:
            logger.info(
                "raised the file-descriptor limit (RLIMIT_NOFILE) from %d to %d", soft, target
            )
    if target < needed:
        logger.warning(
            "the file-descriptor limit (RLIMIT_NOFILE, ulimit -n) is %d, and the hard limit "
            "%d: this service may need about %d (%d per worker, and the socket and metrics "
            "clients); workers that find none left fail to start. Raise it (ulimit -n, "
            "LimitNOFILE= for systemd, --ulimit nofile= for docker)",
            target,
            hard,
            needed,
            FDS_PER_WORKER,
        )

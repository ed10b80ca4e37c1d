"""A worker process as the service holds it: its pid, socket and pidfd, signalled safely.

The launcher (:mod:`dispatcher.server.launcher`) hands out each worker it starts as a
:class:`WorkerProcess`: the service writes to it without blocking, signals it through its
pidfd (no pid-reuse race) and learns of its death at once.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
from collections.abc import Callable
from typing import Final

import anyio

from dispatcher.server.log_records import get_logger
from dispatcher.server.ratelimit import RateLimitedLog
from dispatcher.server.worker_signals import signal_name

logger = get_logger("dispatcher.launcher")

_signal_failures = RateLimitedLog(logger, logging.WARNING, per_second=1, window=60.0)
"""Says that a worker could not be signalled: one line a minute at most."""

KILLED_SILENT: Final = "the service killed its fork server, which did not answer"
"""Why workers ended with a fork server that stayed silent (see
:data:`~dispatcher.server.launcher.FORK_ANSWER_WAIT`)."""
ENDED: Final = "its fork server ended"
"""Why workers ended with a fork server that ended otherwise (killed from outside, say)."""


class WorkerProcess:
    """A running (or ended) worker process, seen from the service."""

    def __init__(self, pid: int, pidfd: int, sock: socket.socket) -> None:
        self.pid = pid
        """The worker's process id (also its process group id)."""
        self.pidfd = pidfd
        """Readable once the process has ended."""
        self.sock = sock
        """The service's end of the worker's socket (non-blocking)."""
        self.fd = sock.fileno()
        """The socket's descriptor: read and written with os calls, which cost less."""
        self.fork_server_end: str | None = None
        """Why it ended with its fork server (:data:`KILLED_SILENT`, :data:`ENDED`), if it
        did (see :meth:`ended_with_fork_server`)."""
        self.notice_fork_server_end: Callable[[], None] | None = None
        """Has the end of its fork server handled now, if it has ended (set by the launcher)."""
        self._outbox = bytearray()

    def send(self, line: bytes) -> bool:
        """Write *line* to the worker without blocking.

        Returns ``False`` when part of it had to wait in the outbox: :meth:`flush` it then.
        A worker that has gone is not an error here: its end is noticed by other means.
        """
        if self._outbox:
            self._outbox += line
            return True  # a flush is already under way
        try:
            sent = os.write(self.fd, line)
        except BlockingIOError:
            sent = 0
        except OSError:
            return True
        if sent == len(line):
            return True
        self._outbox += line[sent:]
        return False

    async def flush(self) -> None:
        """Write what waits in the outbox, as the worker reads."""
        while self._outbox:
            await anyio.wait_writable(self.sock)
            try:
                sent = self.sock.send(self._outbox)
            except BlockingIOError:
                continue
            except OSError:
                self._outbox.clear()
                return
            del self._outbox[:sent]

    def signal(self, signum: int) -> None:
        """Send *signum* to the worker, if it is still there."""
        if self.pidfd < 0:
            return
        try:
            signal.pidfd_send_signal(self.pidfd, signum)
        except ProcessLookupError:
            pass  # it has ended: its end is noticed by other means
        except OSError as exc:  # (blocked by a seccomp profile since the start-up check?)
            _signal_failures.log(
                "cannot signal worker pid %d (%s): pidfd_send_signal fails (%s): its "
                "timeouts, cancels and stops do nothing until it is allowed",
                self.pid,
                signal_name(signum),
                exc.strerror or exc,
            )

    def kill(self) -> None:
        """SIGKILL the worker (its task's children go with it when it is reaped)."""
        self.signal(signal.SIGKILL)

    def terminate(self) -> None:
        """SIGTERM the worker."""
        self.signal(signal.SIGTERM)

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait up to *timeout* seconds (``None``: for ever) for the process to end.

        Returns whether it has ended.
        """
        with anyio.move_on_after(timeout):
            await anyio.wait_readable(self.pidfd)
        readable, _, _ = select.select([self.pidfd], [], [], 0)
        return bool(readable)

    def ended_with_fork_server(self) -> str | None:
        """Why the process ended with its fork server; ``None`` when it did not (or runs).

        For a process that has ended: its end may be seen before its fork server's, whose
        workers all die with it (by their parent-death signal).
        """
        if self.notice_fork_server_end is not None:
            self.notice_fork_server_end()
        return self.fork_server_end

    def close(self) -> None:
        """Release the pidfd and the socket."""
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
        anyio.notify_closing(self.sock)  # a flush still waiting on it gives up
        self.sock.close()
        self.fd = -1

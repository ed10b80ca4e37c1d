"""The service's side of the fork server: start it, ask it for workers, hear of their ends.

See :mod:`dispatcher.server.forkserver` for the process itself. Each worker comes back as a
:class:`WorkerProcess`: its pid, the service's end of its socket, and a pidfd, through which
the service signals it (no pid-reuse race) and learns of its death at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import anyio

from dispatcher.server.forkserver import CONTROL_FD_ENV, MAX_MESSAGE, PARENT_ENV, ForkedServer
from dispatcher.server.logsafe import get_logger
from dispatcher.server.worker import WorkerOptions

logger = get_logger("dispatcher.launcher")

_MAX_FDS = 4


class LaunchError(Exception):
    """A worker could not be started."""


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
        with contextlib.suppress(ProcessLookupError, OSError):
            signal.pidfd_send_signal(self.pidfd, signum)

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

    def close(self) -> None:
        """Release the pidfd and the socket."""
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
        anyio.notify_closing(self.sock)  # a flush still waiting on it gives up
        self.sock.close()
        self.fd = -1


class WorkerLauncher:
    """Starts the fork server (from the event loop's thread) and asks it for workers.

    ``on_exit(pid, status)`` is called when the fork server reports that a worker ended.
    *fork_server*, if given, is one already running (see
    :func:`~dispatcher.server.forkserver.fork_server`): the launcher takes it over rather
    than start one. A fork server that ends is replaced by a new program.
    """

    def __init__(
        self,
        options: WorkerOptions,
        on_exit: Callable[[int, int], None] | None = None,
        fork_server: ForkedServer | None = None,
    ) -> None:
        self.options = options
        self.on_exit = on_exit
        """Called with ``(pid, status)`` when the fork server reports that a worker ended."""
        self._early = fork_server
        self._process: subprocess.Popen[bytes] | ForkedServer | None = None
        self._control: socket.socket | None = None
        self._pending: dict[int, tuple[anyio.Event, list[Any]]] = {}

    def start(self) -> None:
        """Start the fork server now (it imports the task modules while we go on).

        Must run in the thread that lives as long as the service (the event loop's): the
        kernel ties the fork server's life to the thread that started it.
        """
        if self._control is not None:
            return
        early, self._early = self._early, None
        if early is not None:
            self._process, self._control = early, early.control
        else:
            self._control = self._spawn()
        self._control.setblocking(False)
        asyncio.get_running_loop().add_reader(self._control.fileno(), self._on_readable)

    def _spawn(self) -> socket.socket:
        """Start the fork server as a new program; return our end of its control socket."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {**os.environ, CONTROL_FD_ENV: str(theirs.fileno()), PARENT_ENV: str(os.getpid())}
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "dispatcher.server.forkserver"],
                pass_fds=[theirs.fileno()],
                env=env,
                stdin=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        setup = {"sys_path": sys.path, "options": dataclasses.asdict(self.options)}
        ours.sendall(json.dumps(setup).encode())
        return ours

    async def launch(self, worker_id: int) -> WorkerProcess:
        """Start worker *worker_id*; return it once forked (it then imports and says ready).

        :raises LaunchError: when the fork server cannot fork it.
        """
        if self._control is None:
            self.start()
        assert self._control is not None
        ours, theirs = socket.socketpair()
        done = anyio.Event()
        result: list[Any] = []
        self._pending[worker_id] = (done, result)
        try:
            request = json.dumps({"op": "spawn", "id": worker_id}).encode()
            try:
                socket.send_fds(self._control, [request], [theirs.fileno()])
            except OSError as exc:
                raise LaunchError(f"the fork server is gone ({exc})") from None
            finally:
                theirs.close()
            await done.wait()
        except BaseException:
            ours.close()  # a worker forked all the same reads end-of-file and exits
            raise
        finally:
            self._pending.pop(worker_id, None)
        event, fds = result
        if event["event"] != "spawned":
            ours.close()
            for fd in fds:
                os.close(fd)
            raise LaunchError(event.get("error", "the fork server is gone"))
        ours.setblocking(False)
        return WorkerProcess(int(event["pid"]), fds[0], ours)

    def _on_readable(self) -> None:
        assert self._control is not None
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self._control, MAX_MESSAGE, _MAX_FDS)
            except BlockingIOError:
                return
            except OSError:
                data, fds = b"", []
            if not data:
                self._fork_server_gone()
                return
            event = json.loads(data)
            kind = event["event"]
            if kind == "exited":
                if self.on_exit is not None:
                    self.on_exit(int(event["pid"]), int(event["status"]))
                continue
            waiting = self._pending.get(int(event["id"]))
            if waiting is None:  # nobody waits for it any more (cancelled): do not leak it
                for fd in fds:
                    os.close(fd)
                continue
            waiting[1].extend((event, fds))
            waiting[0].set()

    def _fork_server_gone(self) -> None:
        """The fork server ended (it was killed): its workers went with it; start anew."""
        if self._control is None:
            return
        asyncio.get_running_loop().remove_reader(self._control.fileno())
        self._control.close()
        self._control = None
        logger.error("the fork server ended unexpectedly; a new one starts with the next worker")
        for done, result in self._pending.values():
            result.extend(({"event": "failed", "error": "the fork server ended"}, []))
            done.set()
        self._reap_fork_server(0)

    def close(self) -> None:
        """Stop the fork server (it kills any worker left), and wait briefly for it to exit."""
        early, self._early = self._early, None
        if early is not None:  # never started: the fork server forked for us is not needed
            early.close()
        if self._control is not None:
            with contextlib.suppress(RuntimeError, ValueError):
                asyncio.get_running_loop().remove_reader(self._control.fileno())
            self._control.close()
            self._control = None
        self._reap_fork_server(5.0)

    def _reap_fork_server(self, timeout: float) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

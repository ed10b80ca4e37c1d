"""One fork server as the launcher sees it: its state, how it is started, read and reaped.

See :mod:`dispatcher.server.forkserver` for the process itself and
:mod:`dispatcher.server.launcher` for what asks it for workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from typing import Any

import anyio

from dispatcher.server.fork_server_packets import MAX_MESSAGE, PacketJoiner
from dispatcher.server.forkserver import CONTROL_FD_ENV, PARENT_ENV, SETUP_FD_ENV, ForkedServer
from dispatcher.server.launch_errors import LaunchError, failure_text
from dispatcher.server.launched_process import WorkerProcess
from dispatcher.server.resources import out_of_fds_text
from dispatcher.server.worker import WorkerOptions

_MAX_FDS = 4


class ForkServerLink:
    """One fork server, seen from the launcher: its process and our end of its socket."""

    def __init__(
        self, process: subprocess.Popen[bytes] | ForkedServer, control: socket.socket
    ) -> None:
        self.process = process
        """The fork server's process."""
        self.control = control
        """The service's end of its control socket (non-blocking once opened)."""
        self.pending: dict[int, tuple[anyio.Event, list[Any]]] = {}
        """Spawn requests waiting for an answer, by worker id."""
        self.workers: set[int] = set()
        """Pids of the workers it forked that it has not reported ended."""
        self.processes: dict[int, WorkerProcess] = {}
        """Those of :attr:`workers` handed out as processes, by pid."""
        self.retiring = False
        """Replaced by a newer fork server: closed once its last worker has ended."""
        self.report: dict[str, Any] | None = None
        """Its report on importing the task modules (see ``forkserver``), once received;
        ``{"ok": False, "ended": status}`` when it ended before it could report."""
        self.reported = anyio.Event()
        """Set when :attr:`report` has arrived, or the fork server has ended without one."""
        self.heard = time.monotonic()
        """When it last sent anything (``time.monotonic()``)."""
        self.joiner = PacketJoiner()
        """Joins the parts of its messages too long for one packet (its import report)."""
        self.pidfd = -1
        """Readable once its process has ended (its socket may outlive it, held by a child
        that a task module forked as it was imported)."""


def _memory_file(data: bytes) -> int:
    """A descriptor of an anonymous file holding *data*, read from its start."""
    fd = os.memfd_create("dispatcher-forkserver-setup", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def spawn_fork_server(options: WorkerOptions) -> ForkServerLink:
    """Start the fork server as a new program.

    Its settings (the config among them, of any size) are written to a memory file it
    inherits: nothing here waits for it to read them.
    """
    setup = {"sys_path": sys.path, "options": dataclasses.asdict(options)}
    written = _memory_file(json.dumps(setup).encode())
    try:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    except OSError:
        os.close(written)
        raise
    env = {
        **os.environ,
        CONTROL_FD_ENV: str(theirs.fileno()),
        SETUP_FD_ENV: str(written),
        PARENT_ENV: str(os.getpid()),
    }
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "dispatcher.server.forkserver"],
            pass_fds=[theirs.fileno(), written],
            env=env,
            stdin=subprocess.DEVNULL,
        )
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
        os.close(written)
    return ForkServerLink(process, ours)


def reap(link: ForkServerLink, timeout: float) -> int:
    """Wait up to *timeout* seconds for *link*'s process to end, then kill it; its status."""
    try:
        return link.process.wait(timeout)
    except subprocess.TimeoutExpired:
        link.process.kill()
        return link.process.wait()


def ask_to_spawn(link: ForkServerLink, worker_id: int, theirs: socket.socket) -> None:
    """Ask *link* to fork worker *worker_id* on *theirs*, its end of its socket (closed here).

    :raises LaunchError: when the fork server is gone.
    """
    request = json.dumps({"op": "spawn", "id": worker_id}).encode()
    try:
        socket.send_fds(link.control, [request], [theirs.fileno()])
    except OSError as exc:
        raise LaunchError(f"the fork server is gone ({exc})") from None
    finally:
        theirs.close()


def receive(link: ForkServerLink) -> tuple[bytes, list[int]] | None:
    """The next whole message *link* has sent, with its descriptors; ``None`` if none waits.

    The message is empty at the end of its socket.
    """
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(link.control, MAX_MESSAGE, _MAX_FDS)
        except BlockingIOError:
            return None
        except OSError:
            data, fds = b"", []
        if not data:
            return data, fds
        link.heard = time.monotonic()
        whole = link.joiner.add(data)
        if whole is not None:
            return whole, fds


def hand_answer(link: ForkServerLink, event: dict[str, Any], fds: list[int]) -> None:
    """Hand *link*'s answer to a spawn request, *event* with *fds*, to the request's waiter."""
    if event.get("event") == "spawned":
        link.workers.add(int(event["pid"]))
    waiting = link.pending.get(int(event.get("id", -1)))
    if waiting is None:  # nobody waits for it (cancelled, or not ours): do not leak it
        for fd in fds:
            os.close(fd)
        return
    waiting[1].extend((event, fds))
    waiting[0].set()


def worker_from_answer(result: list[Any], ours: socket.socket) -> WorkerProcess:
    """The worker a fork server's answer to a spawn request gives, with *ours*, its socket.

    :raises LaunchError: when the answer says it could not be forked (*ours* is closed).
    """
    event, fds = result
    if event["event"] != "spawned":
        ours.close()
        for fd in fds:
            os.close(fd)
        raise LaunchError(failure_text(event))
    if len(fds) != 1:  # the kernel dropped the pidfd: no descriptor was left for it
        ours.close()  # the worker reads end-of-file and exits
        for fd in fds:
            os.close(fd)
        raise LaunchError(f"{out_of_fds_text()}: its pidfd could not be received")
    ours.setblocking(False)
    return WorkerProcess(int(event["pid"]), fds[0], ours)


def fail_waiting(link: ForkServerLink, why: str) -> None:
    """Fail the spawn requests *link* left unanswered as it ended; tell its workers *why*.

    *why* becomes each one's
    :attr:`~dispatcher.server.launched_process.WorkerProcess.fork_server_end`.
    """
    for done, result in link.pending.values():
        result.extend(({"event": "failed", "error": "the fork server ended"}, []))
        done.set()
    for process in link.processes.values():
        process.fork_server_end = why
    link.processes.clear()


def close_link(link: ForkServerLink) -> None:
    """Stop reading *link* and close our end of its socket and its pidfd."""
    link.reported.set()  # no report will come now (it is ours that closes it)
    with contextlib.suppress(RuntimeError, ValueError, OSError):
        asyncio.get_running_loop().remove_reader(link.control.fileno())
    link.control.close()
    if link.pidfd >= 0:
        with contextlib.suppress(RuntimeError, ValueError, OSError):
            asyncio.get_running_loop().remove_reader(link.pidfd)
        os.close(link.pidfd)
        link.pidfd = -1

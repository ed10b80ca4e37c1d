"""The service's side of the fork server: start it, ask it for workers, hear of their ends.

See :mod:`dispatcher.server.forkserver` for the process itself. Each worker comes back as a
:class:`~dispatcher.server.launched_process.WorkerProcess`: its pid, the service's end of its
socket, and a pidfd, through which the service signals it (no pid-reuse race) and learns of
its death at once.
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
import time
from collections.abc import Callable
from typing import Any, Final

import anyio

from dispatcher.server.forkserver import (
    CONTROL_FD_ENV,
    MAX_MESSAGE,
    PARENT_ENV,
    SETUP_FD_ENV,
    ForkedServer,
    PacketJoiner,
)
from dispatcher.server.launch_errors import ForkServerReplaced, LaunchError, failure_text
from dispatcher.server.launched_process import ENDED, KILLED_SILENT, WorkerProcess
from dispatcher.server.log_records import get_logger
from dispatcher.server.log_text import counted
from dispatcher.server.resources import out_of_fds_text
from dispatcher.server.worker import WorkerOptions

logger = get_logger("dispatcher.launcher")

_MAX_FDS = 4

FORK_ANSWER_WAIT: Final = 15.0
"""Seconds a fork server that has imported the task modules may go without answering
while a fork request waits (a fork takes milliseconds; requests are answered one after
another, so the silence is measured, not each request's wait): one that stays silent
that long is stopped, or stuck, and is replaced. Long, since replacing it kills its
workers: a machine stalled for a few seconds (swapping, throttled) must not cost that."""


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


class WorkerLauncher:
    """Starts the fork server (from the event loop's thread) and asks it for workers.

    ``on_exit(pid, status)`` is called when the fork server reports that a worker ended.
    *fork_server*, if given, is one already running (see
    :func:`~dispatcher.server.forkserver.fork_server`): the launcher takes it over rather
    than start one. A fork server that ends is replaced by a new program.

    For a reload, :meth:`prepare` starts a new fork server (which imports the task modules
    afresh) beside the one in use; :meth:`switch_to` makes it the one new workers come from,
    and the old one is closed once its last worker has ended; :meth:`discard` closes it
    instead.
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
        self.on_imported: Callable[[dict[str, Any] | None], None] | None = None
        """Called with each fork server's task-import report (``None``: it ended first)."""
        self._early = fork_server
        self._current: ForkServerLink | None = None
        self._links: list[ForkServerLink] = []
        """Every fork server open: the current one, one being prepared, retiring ones."""

    def pids(self) -> set[int]:
        """The process ids of the fork servers open (the launcher waits for each to end)."""
        early = set() if self._early is None else {self._early.pid}
        return early | {link.process.pid for link in self._links}

    def start(self) -> None:
        """Start the fork server now (it imports the task modules while we go on).

        Must run in the thread that lives as long as the service (the event loop's): the
        kernel ties the fork server's life to the thread that started it.
        """
        if self._current is not None:
            return
        early, self._early = self._early, None
        if early is not None:
            self._current = self._open(ForkServerLink(early, early.control))
        else:
            self._current = self._open(self._spawn())

    def prepare(self) -> ForkServerLink:
        """Start a new fork server beside the current one; workers come from it once switched.

        It is a new program: it imports the task modules as they are now.
        """
        return self._open(self._spawn())

    def switch_to(self, link: ForkServerLink) -> None:
        """Have new workers come from *link*; the old fork server goes with its last worker."""
        old, self._current = self._current, link
        if old is not None and old is not link:
            old.retiring = True
            self._close_if_idle(old)

    def discard(self, link: ForkServerLink) -> None:
        """Close a fork server from :meth:`prepare` that is not wanted (its workers die)."""
        if link is not self._current:
            importing = not link.reported.is_set()  # (stuck there, maybe: not waited for)
            self._detach(link)
            self._reap(link, 0.0 if importing else 5.0)

    async def import_report(self, link: ForkServerLink | None = None) -> dict[str, Any] | None:
        """Wait for the task-import report of *link* (default: the current fork server).

        ``None`` when the fork server ended before it reported.
        """
        if link is None:
            self.start()
            link = self._current
            assert link is not None
        await link.reported.wait()
        return link.report

    def _open(self, link: ForkServerLink) -> ForkServerLink:
        link.control.setblocking(False)
        loop = asyncio.get_running_loop()
        loop.add_reader(link.control.fileno(), self._on_readable, link)
        with contextlib.suppress(OSError):  # (without it, its socket's end tells)
            link.pidfd = os.pidfd_open(link.process.pid)
            loop.add_reader(link.pidfd, self._fork_server_gone, link)
        self._links.append(link)
        return link

    def _spawn(self) -> ForkServerLink:
        """Start the fork server as a new program.

        Its settings (the config among them, of any size) are written to a memory file it
        inherits: nothing here waits for it to read them.
        """
        setup = {"sys_path": sys.path, "options": dataclasses.asdict(self.options)}
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

    async def launch(self, worker_id: int, link: ForkServerLink | None = None) -> WorkerProcess:
        """Start worker *worker_id*; return it once forked (it then imports and says ready).

        It comes from the current fork server, or from *link* (see :meth:`prepare`).

        :raises LaunchError: when the fork server cannot fork it.
        """
        if link is None:
            self.start()
            link = self._current
            assert link is not None
        ours, theirs = socket.socketpair()
        done = anyio.Event()
        result: list[Any] = []
        link.pending[worker_id] = (done, result)
        try:
            request = json.dumps({"op": "spawn", "id": worker_id}).encode()
            try:
                socket.send_fds(link.control, [request], [theirs.fileno()])
            except OSError as exc:
                raise LaunchError(f"the fork server is gone ({exc})") from None
            finally:
                theirs.close()
            await link.reported.wait()  # (spawn requests wait for the import: not timed)
            asked = time.monotonic()
            while not done.is_set():
                silent = time.monotonic() - max(link.heard, asked)
                if silent >= FORK_ANSWER_WAIT:
                    self._unresponsive(link)
                    raise ForkServerReplaced("the fork server did not answer")
                with anyio.move_on_after(FORK_ANSWER_WAIT - silent):
                    await done.wait()
        except BaseException:
            ours.close()  # a worker forked all the same reads end-of-file and exits
            raise
        finally:
            link.pending.pop(worker_id, None)
            if link.retiring:
                self._close_if_idle(link)
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
        process = WorkerProcess(int(event["pid"]), fds[0], ours)
        if process.pid in link.workers:  # (not reported ended meanwhile)
            link.processes[process.pid] = process
            process.notice_fork_server_end = lambda: self._notice_end(link)
        return process

    def _on_readable(self, link: ForkServerLink) -> None:
        if not self._read_events(link):
            self._fork_server_gone(link)

    def _read_events(self, link: ForkServerLink) -> bool:
        """Handle what *link* has sent; ``False`` at the end of its socket."""
        while True:
            if link not in self._links:  # closed meanwhile (a retired one's last worker)
                return True
            try:
                data, fds, _, _ = socket.recv_fds(link.control, MAX_MESSAGE, _MAX_FDS)
            except BlockingIOError:
                return True
            except OSError:
                data, fds = b"", []
            if not data:
                return False
            link.heard = time.monotonic()
            whole = link.joiner.add(data)
            if whole is None:
                continue
            event = json.loads(whole)
            kind = event.get("event")
            if kind == "exited":
                link.workers.discard(int(event["pid"]))
                link.processes.pop(int(event["pid"]), None)
                if self.on_exit is not None:
                    self.on_exit(int(event["pid"]), int(event["status"]))
                if link.retiring and self._close_if_idle(link):
                    return True
                continue
            if kind == "imported":
                self._reported(link, event)
                continue
            if kind == "spawned":
                link.workers.add(int(event["pid"]))
            waiting = link.pending.get(int(event.get("id", -1)))
            if waiting is None:  # nobody waits for it (cancelled, or not ours): do not leak it
                for fd in fds:
                    os.close(fd)
                continue
            waiting[1].extend((event, fds))
            waiting[0].set()

    def _notice_end(self, link: ForkServerLink) -> None:
        """Handle the end of *link*'s fork server now, if it has ended."""
        if link not in self._links or link.pidfd < 0:  # (else its socket's end tells)
            return
        readable, _, _ = select.select([link.pidfd], [], [], 0)
        if readable:
            self._fork_server_gone(link)

    def _fork_server_gone(
        self, link: ForkServerLink, reported: bool = False, why: str = ENDED
    ) -> None:
        """A fork server ended (it was killed): its workers went with it.

        *reported*: its end has been logged already; *why*: what its workers are told
        (:attr:`~dispatcher.server.launched_process.WorkerProcess.fork_server_end`).
        """
        if link not in self._links:
            return
        self._read_events(link)  # what it said before it ended (its report, maybe)
        if link not in self._links:
            return
        importing = not link.reported.is_set()
        # Its socket is closed, or its process has ended: it is exiting, or gone. Its
        # status says how (os._exit(n), a signal).
        status = self._reap(link, 1.0)
        if importing:
            self._reported(link, {"ok": False, "ended": status})
        self._detach(link)
        if link is self._current:
            self._current = None
            if not importing and not reported:  # (else the import report's reader says)
                logger.error(
                    "the fork server ended unexpectedly (exit status %s); a new one starts "
                    "with the next worker",
                    status,
                )
        for done, result in link.pending.values():
            result.extend(({"event": "failed", "error": "the fork server ended"}, []))
            done.set()
        for process in link.processes.values():
            process.fork_server_end = why
        link.processes.clear()
        if self.on_exit is not None:
            # Its workers die with it, by their parent-death signal: it cannot say so now.
            for pid in sorted(link.workers):
                self.on_exit(pid, -signal.SIGKILL)
        link.workers.clear()

    def _unresponsive(self, link: ForkServerLink) -> None:
        """*link* did not answer a fork request in time: kill it (its workers go with it).

        The next worker comes from a new fork server, as after any end of the fork server.
        """
        if link not in self._links:
            return
        logger.error(
            "the fork server (pid %d) did not answer a fork request within %g s (stopped, "
            "or stuck?): killing it, with its %s; a new one starts with the next worker",
            link.process.pid,
            FORK_ANSWER_WAIT,
            counted(len(link.workers), "worker"),
        )
        link.process.kill()
        self._fork_server_gone(link, reported=True, why=KILLED_SILENT)

    def _reported(self, link: ForkServerLink, report: dict[str, Any] | None) -> None:
        if link.reported.is_set():
            return
        link.report = report
        link.reported.set()
        if self.on_imported is not None:
            self.on_imported(report)

    def _close_if_idle(self, link: ForkServerLink) -> bool:
        """Close retiring *link* if none of its workers is left; tell whether it was."""
        if link.workers or link.pending or link not in self._links:
            return False
        self._detach(link)
        self._reap(link, 5.0)
        return True

    def close(self) -> None:
        """Stop the fork servers (they kill any worker left), and wait briefly for them to exit."""
        early, self._early = self._early, None
        if early is not None:  # never started: the fork server forked for us is not needed
            early.close()
        links = list(self._links)
        # One still importing the task modules may be stuck there (it reads no socket, and
        # has no worker to stop): it is killed at once rather than waited for.
        importing = {id(link) for link in links if not link.reported.is_set()}
        for link in links:
            self._detach(link)
        self._current = None
        for link in links:
            self._reap(link, 0.0 if id(link) in importing else 5.0)

    def _detach(self, link: ForkServerLink) -> None:
        """Stop reading *link* and close our end of its socket (the fork server then exits)."""
        if link in self._links:
            self._links.remove(link)
        link.reported.set()  # no report will come now (it is ours that closes it)
        with contextlib.suppress(RuntimeError, ValueError, OSError):
            asyncio.get_running_loop().remove_reader(link.control.fileno())
        link.control.close()
        if link.pidfd >= 0:
            with contextlib.suppress(RuntimeError, ValueError, OSError):
                asyncio.get_running_loop().remove_reader(link.pidfd)
            os.close(link.pidfd)
            link.pidfd = -1

    @staticmethod
    def _reap(link: ForkServerLink, timeout: float) -> int:
        """Wait up to *timeout* seconds for *link*'s process to end, then kill it; its status."""
        try:
            return link.process.wait(timeout)
        except subprocess.TimeoutExpired:
            link.process.kill()
            return link.process.wait()

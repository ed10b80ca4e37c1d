"""The service's side of the fork server: start it, ask it for workers, hear of their ends.

See :mod:`dispatcher.server.forkserver` for the process itself. Each worker comes back as a
:class:`~dispatcher.server.launched_process.WorkerProcess`: its pid, the service's end of its
socket, and a pidfd, through which the service signals it (no pid-reuse race) and learns of
its death at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import socket
import time
from collections.abc import Callable
from typing import Any, Final

import anyio

from dispatcher.server.fork_server_link import (
    ForkServerLink,
    ask_to_spawn,
    close_link,
    fail_waiting,
    hand_answer,
    reap,
    receive,
    spawn_fork_server,
    worker_from_answer,
)
from dispatcher.server.forkserver import ForkedServer
from dispatcher.server.launch_errors import ForkServerReplaced
from dispatcher.server.launched_process import ENDED, KILLED_SILENT, WorkerProcess
from dispatcher.server.log_records import get_logger
from dispatcher.server.log_text import counted
from dispatcher.server.worker import WorkerOptions

logger = get_logger("dispatcher.launcher")

FORK_ANSWER_WAIT: Final = 15.0
"""Seconds a fork server that has imported the task modules may go without answering
while a fork request waits (a fork takes milliseconds; requests are answered one after
another, so the silence is measured, not each request's wait): one that stays silent
that long is stopped, or stuck, and is replaced. Long, since replacing it kills its
workers: a machine stalled for a few seconds (swapping, throttled) must not cost that."""


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
            self._current = self._open(spawn_fork_server(self.options))

    def prepare(self) -> ForkServerLink:
        """Start a new fork server beside the current one; workers come from it once switched.

        It is a new program: it imports the task modules as they are now.
        """
        return self._open(spawn_fork_server(self.options))

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
            reap(link, 0.0 if importing else 5.0)

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
            ask_to_spawn(link, worker_id, theirs)
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
        process = worker_from_answer(result, ours)
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
            message = receive(link)
            if message is None:
                return True
            whole, fds = message
            if not whole:
                return False
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
            hand_answer(link, event, fds)

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
        status = reap(link, 1.0)
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
        fail_waiting(link, why)
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
        reap(link, 5.0)
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
            reap(link, 0.0 if id(link) in importing else 5.0)

    def _detach(self, link: ForkServerLink) -> None:
        """Stop reading *link* and close our end of its socket (the fork server then exits)."""
        if link in self._links:
            self._links.remove(link)
        close_link(link)

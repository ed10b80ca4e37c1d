"""The fork server's life once it runs: it imports the task modules, then forks workers.

It installs the service's config, imports the task modules and reports how that went, then
forks a worker on each request, reaps each worker that ends (killing what is left of its
process group) and kills them all when the service goes away. How it comes to run, forked
from the service or started as a program, is in :mod:`dispatcher.server.forkserver`.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import os
import select
import signal
import socket
import time
import traceback
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, NoReturn

from dispatcher.server.fork_server_packets import MAX_MESSAGE, send_message
from dispatcher.server.fork_server_signals import give_back_defaults, ignore_stray_signals
from dispatcher.server.heap import release_free_memory
from dispatcher.server.lifeline import die_with_parent, kill_children
from dispatcher.server.log_arguments import Block
from dispatcher.server.log_background import drain_log_streams
from dispatcher.server.log_handler import LAST_LINES_WAIT
from dispatcher.server.log_records import get_logger
from dispatcher.server.log_setup import root_left_to_the_app
from dispatcher.server.log_text import describe_exception
from dispatcher.server.task_imports import import_report
from dispatcher.server.worker import WorkerOptions, worker_main

if TYPE_CHECKING:
    from dispatcher.config import Settings

logger = get_logger("dispatcher.worker")

_MAX_FDS: Final = 4

DEATH_SIGNAL: Final = signal.SIGUSR2
"""What the kernel sends the fork server when the service's main process ends."""


_SOCKET_TAKEN: Final = frozenset({errno.EBADF, errno.ENOTSOCK})
"""What the worker's socket fails with once task code closed it (``os.close()``,
``os.closerange()``) or put another file in its place (``os.dup2()``)."""


def _report_worker_failure(worker_id: int, exc: BaseException) -> None:
    """Log what ended a worker outside any task, escaped: its text may come from task code.

    A worker whose socket the service closed (it could not take the worker on: out of file
    descriptors, say, and said so) exits with one line, its traceback at DEBUG only; one
    whose socket its task closed says so.
    """
    with contextlib.suppress(BaseException):  # the worker exits whatever happens here
        if isinstance(exc, BrokenPipeError | ConnectionResetError):
            logger.info(
                "worker %d exits: the service closed its socket (%s)",
                worker_id,
                describe_exception(exc),
            )
            logger.debug("worker %d:%s", worker_id, Block("".join(traceback.format_exception(exc))))
            return
        if isinstance(exc, OSError) and exc.errno in _SOCKET_TAKEN:
            # Between tasks, the worker uses no other descriptor that would fail so.
            logger.critical(
                "worker %d ended: the socket it reports to the service on was closed or "
                "replaced, by its task most likely (%s)%s",
                worker_id,
                describe_exception(exc),
                Block("".join(traceback.format_exception(exc))),
            )
            return
        logger.critical(
            "worker %d ended on an unexpected error: %s%s",
            worker_id,
            describe_exception(exc),
            Block("".join(traceback.format_exception(exc))),
        )


class ForkServer:
    """The loop of the fork server process."""

    def __init__(self, control: socket.socket, options: dict[str, Any]) -> None:
        self._control = control
        self._options = options
        self._pid = os.getpid()
        self._parent = os.getppid()
        """The service's main process, while it lives."""
        self._workers: set[int] = set()
        self._wakeup_read, self._wakeup_write = os.pipe()
        os.set_blocking(self._wakeup_write, False)
        os.set_blocking(self._wakeup_read, False)

    def serve(self) -> NoReturn:
        """Fork workers on request until the service goes away; then kill them all."""
        ignore_stray_signals()  # (a task's os.kill(os.getppid(), ...) reaches this process)
        signal.signal(DEATH_SIGNAL, self._on_service_death)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.set_wakeup_fd(self._wakeup_write, warn_on_full_buffer=False)
        # Everything imported so far is shared with every worker: keep the garbage collector
        # from touching (so copying) those pages in the workers.
        gc.freeze()
        release_free_memory()  # pages the imports freed: not inherited by every worker
        try:
            while True:
                self._reap()
                watched = [self._control.fileno(), self._wakeup_read]
                readable, _, _ = select.select(watched, [], [])
                if self._wakeup_read in readable:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wakeup_read, 512)
                if watched[0] in readable and not self._handle_request():
                    break
        finally:
            self._kill_all()
        os._exit(0)

    def _on_service_death(self, signum: int, frame: object) -> None:
        """The service has ended: kill every worker, and exit.

        Unless the service is still this process's parent: then the signal came from
        elsewhere (a task's ``os.kill(os.getppid(), ...)``); the kernel gives the fork
        server its new parent before it sends the signal of the old one's end.
        """
        if os.getppid() == self._parent:
            return
        self._kill_all()
        os._exit(0)

    def _handle_request(self) -> bool:
        try:
            data, fds, _, _ = socket.recv_fds(self._control, MAX_MESSAGE, _MAX_FDS)
        except OSError:
            return False
        if not data:
            return False
        request = json.loads(data)
        worker_id = int(request["id"])
        if request.get("op") != "spawn" or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            send_message(
                self._control, {"event": "failed", "id": worker_id, "error": "bad request"}
            )
            return True
        worker_fd = fds[0]
        try:
            pid = self._fork(worker_id, worker_fd)
        except OSError as exc:
            failed = {"event": "failed", "id": worker_id, "error": str(exc), "errno": exc.errno}
            send_message(self._control, failed)
            return True
        finally:
            os.close(worker_fd)
        self._workers.add(pid)  # from now on it is reaped, and killed with the others
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as exc:  # the service could not watch it: it must not run
            _kill_group(pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            failed = {"event": "failed", "id": worker_id, "error": str(exc), "errno": exc.errno}
            send_message(self._control, failed)
            return True
        send_message(self._control, {"event": "spawned", "id": worker_id, "pid": pid}, [pidfd])
        os.close(pidfd)
        return True

    def _fork(self, worker_id: int, worker_fd: int) -> int:
        pid = os.fork()
        if pid:
            # Set here too, so the group exists before this process could ever signal it.
            with contextlib.suppress(OSError):
                os.setpgid(pid, pid)
            return pid
        status = 0
        try:
            self._become_worker(worker_id, worker_fd)
        except BaseException as exc:
            _report_worker_failure(worker_id, exc)
            status = 1
        finally:
            with contextlib.suppress(BaseException):  # (the lines logged last: the failure's)
                drain_log_streams(LAST_LINES_WAIT)
            os._exit(status)

    def _become_worker(self, worker_id: int, worker_fd: int) -> None:
        """Runs in the new child: shed the fork server's state, then be a worker."""
        signal.set_wakeup_fd(-1)
        os.setpgid(0, 0)  # its own group: whatever the task starts can be killed with it
        # (first: a Ctrl-C sent to the fork server's group no longer reaches it, so the
        # defaults given back next cannot end it before the worker ignores SIGINT)
        give_back_defaults()
        for number in (signal.SIGCHLD, DEATH_SIGNAL):
            signal.signal(number, signal.SIG_DFL)
        self._control.close()
        os.close(self._wakeup_read)
        os.close(self._wakeup_write)
        die_with_parent(signal.SIGKILL, parent=self._pid)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)  # a worker never reads the terminal (and is not stopped for it)
        os.close(null)
        options = WorkerOptions(**{**self._options, "worker_id": worker_id})
        worker_main(socket.socket(fileno=worker_fd), options)

    def _reap(self) -> None:
        """Reap the workers that ended, and the orphans of their tasks it adopted."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self._workers.clear()
                return
            if pid == 0:
                return
            if pid not in self._workers:
                continue  # an orphan a task left (see adopt_orphans): reaped, nothing more
            self._workers.discard(pid)
            _kill_group(pid)  # the children its task left behind
            code = os.waitstatus_to_exitcode(status)
            send_message(self._control, {"event": "exited", "pid": pid, "status": code})

    def _kill_all(self) -> None:
        for pid in list(self._workers):
            _kill_group(pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # What their tasks left in a process group or session of its own (out of reach of
        # the kill of a worker's group), adopted here as their parent ended.
        kill_children(time.monotonic() + ADOPTED_GRACE)


ADOPTED_GRACE: Final = 0.5
"""Seconds a fork server that stops spends killing the processes it adopted (at most)."""


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def preload_and_serve(
    control: socket.socket, options: dict[str, Any], settings: Settings | None = None
) -> NoReturn:
    """Import the task modules, report how that went, then fork workers on request.

    The service waits for the report before any broker listens. Serving goes on after a
    failure too: each worker then imports the modules again and reports its error.
    """
    _install_service_config(options, settings)
    with root_left_to_the_app():  # (it has the service's handler: a basicConfig() must work)
        report = import_report(options.get("modules", ()))
    send_message(control, {"event": "imported", **report})
    ForkServer(control, options).serve()


def _install_service_config(options: Mapping[str, Any], settings: Settings | None) -> None:
    """Make the service's config the one in force here, so in every worker, from now on.

    Whatever the task modules do when imported (a framework's start-up, such as Django's,
    may set up a config of its own where none is), ``get_settings()`` in a task answers with
    the config the service runs on: *settings* when the service's process gave them (it
    checked them: a config of thousands of channels costs time to check), else the config
    document of *options*, loaded here.
    """
    from dispatcher.config import ConfigError, install, setup

    if settings is not None:  # (also when the config cannot travel as a document)
        install(settings)
        return
    document = options.get("config")
    if document is None:
        return
    try:
        setup(config=document, source=options.get("config_source") or "config")
    except ConfigError as exc:  # (it was valid in the service: not expected)
        logger.warning("the service's config could not be installed in the fork server: %s", exc)

"""The fork server: a small process that imports the task modules once, then forks workers.

The service's main process runs an event loop and threads, so it never forks a worker
itself. ``dispatcher-standalone`` forks this process from its own at start
(:func:`fork_server`), while it still has a single thread and after it has imported what
workers need, so that the fork server and every worker share those modules' memory with it;
the fork server imports the task modules while the service goes on starting. Otherwise (a
service run from Python, or a fork server that ended) the service starts it as a new program
(``python -m dispatcher.server.forkserver``). Either way the service asks it, over a
``SOCK_SEQPACKET`` socket, for each new worker. The fork server:

- forks the worker and hands back its pid and a pidfd (a file descriptor that becomes
  readable the moment the process ends, whatever its children do with its other files);
- reaps each worker that ends, then kills whatever is left of its process group (the
  children a task started), and reports the exit status;
- dies with the service: the kernel sends it SIGUSR2 when the main process ends, even by
  SIGKILL (``PR_SET_PDEATHSIG``), and it then kills every worker's process group before it
  exits; it does the same when the service closes its socket. Signals meant for the service
  (SIGINT, SIGTERM, SIGHUP sent to the whole process group) leave it alone: the service
  decides when its workers stop. Workers are killed by the kernel in turn if the fork
  server itself disappears.

Messages to the fork server are one JSON object each: ``{"op": "spawn", "id": N}`` with the
worker's socket attached (``SCM_RIGHTS``). Messages from it: first ``{"event": "imported",
"ok": true, "task_count": N, "task_names": [...]}`` or ``{"event": "imported", "ok": false,
...}`` once it has imported the task modules (see :mod:`dispatcher.server.task_imports`;
spawn requests wait until then), then ``{"event": "spawned", "id": N, "pid": P}`` with the
pidfd attached, ``{"event": "failed", "id": N, "error": "..."}``, and ``{"event": "exited",
"pid": P, "status": S}`` (``S`` as from ``os.waitstatus_to_exitcode``). A message longer than
one packet (:data:`~dispatcher.server.fork_server_packets.MAX_MESSAGE`: the import report of
thousands of tasks) goes in parts (see :mod:`dispatcher.server.fork_server_packets`). A fork
server started as a program reads its settings (the config among them, of any size) from a
memory file whose descriptor it inherits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, NoReturn

from dispatcher.server.fork_server_packets import MAX_MESSAGE, send_message
from dispatcher.server.heap import release_free_memory
from dispatcher.server.lifeline import adopt_orphans, die_with_parent, kill_children
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

CONTROL_FD_ENV: Final = "DISPATCHER_FORKSERVER_FD"
"""Environment variable naming the fork server's end of its control socket."""

SETUP_FD_ENV: Final = "DISPATCHER_FORKSERVER_SETUP_FD"
"""Environment variable naming the file a fork server started as a program reads its
settings from."""

DEATH_SIGNAL: Final = signal.SIGUSR2
"""What the kernel sends the fork server when the service's main process ends."""

PARENT_ENV: Final = "DISPATCHER_FORKSERVER_PARENT"
"""Environment variable with the pid of the service that started the fork server."""


def _report_worker_failure(worker_id: int, exc: BaseException) -> None:
    """Log what ended a worker outside any task, escaped: its text may come from task code.

    A worker whose socket the service closed (it could not take the worker on: out of file
    descriptors, say, and said so) exits with one line, its traceback at DEBUG only.
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
        self._workers: set[int] = set()
        self._wakeup_read, self._wakeup_write = os.pipe()
        os.set_blocking(self._wakeup_write, False)
        os.set_blocking(self._wakeup_read, False)

    def serve(self) -> NoReturn:
        """Fork workers on request until the service goes away; then kill them all."""
        for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(number, signal.SIG_IGN)  # the service's to handle
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

    def _on_service_death(self, signum: int, frame: object) -> NoReturn:
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
        for number in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, DEATH_SIGNAL):
            signal.signal(number, signal.SIG_DFL)
        self._control.close()
        os.close(self._wakeup_read)
        os.close(self._wakeup_write)
        os.setpgid(0, 0)  # its own group: whatever the task starts can be killed with it
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


def worker_options(settings: Settings, log_level: int) -> WorkerOptions:
    """What every worker of a service configured by *settings* is told (its id aside)."""
    return WorkerOptions(
        worker_id=0,
        modules=tuple(settings.tasks.modules),
        hooks_class=settings.worker.worker_class,
        idle_timeout=settings.worker.idle_timeout,
        log_level=log_level,
        log_format=settings.service.log_format,
        max_output_bytes=settings.worker.max_output_bytes,
        config=_travelling(settings.data),
        config_source=settings.source,
    )


def _travelling(document: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """*document* as JSON gives it back (how it reaches a fork server started as a program).

    ``None`` when JSON cannot hold it.
    """
    try:
        travelled: Mapping[str, Any] = json.loads(json.dumps(document))
    except (TypeError, ValueError):
        return None
    return travelled


class ForkedServer:
    """A fork server forked by :func:`fork_server`, seen from the process that forked it.

    Its :meth:`wait` and :meth:`kill` behave as those of :class:`subprocess.Popen`.
    """

    def __init__(self, pid: int, pidfd: int, control: socket.socket) -> None:
        self.pid = pid
        """The fork server's process id."""
        self.control = control
        """This process's end of the control socket (blocking)."""
        self.returncode: int | None = None
        """The exit status once :meth:`wait` has seen the process end."""
        self._pidfd = pidfd

    def wait(self, timeout: float | None = None) -> int:
        """Reap the fork server; return its exit status.

        :raises subprocess.TimeoutExpired: if it is still running after *timeout* seconds.
        """
        if self.returncode is None:
            readable, _, _ = select.select([self._pidfd], [], [], timeout)
            if not readable:
                raise subprocess.TimeoutExpired("fork server", timeout or 0.0)
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
            os.close(self._pidfd)
        return self.returncode

    def kill(self) -> None:
        """SIGKILL the fork server (its workers die with it), unless it has been reaped."""
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError, OSError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)

    def close(self) -> None:
        """Stop the fork server if no one else has: close its socket, reap it."""
        self.control.close()
        try:
            self.wait(5.0)
        except subprocess.TimeoutExpired:
            self.kill()
            self.wait()


_HELD_SIGNALS: Final = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})


def fork_server(options: WorkerOptions, settings: Settings | None = None) -> ForkedServer | None:
    """Fork the fork server from this process; ``None`` where that is not safe.

    *settings*, the config ``options.config`` holds as loaded here, is installed in the fork
    server as it is, not loaded (and checked) again.

    Forking is safe only while this process has a single thread, so this is for a service's
    start-up, before its event loop runs, and from its main thread (whose end the fork
    server's is tied to). Every object that exists now is frozen (:func:`gc.freeze`): no
    garbage collection, here or in the fork server or its workers, writes to the pages they
    share.
    """
    if not sys.platform.startswith("linux") or not _single_threaded():
        return None
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()  # else what waits in their buffers would be written twice
    parent = os.getpid()
    gc.freeze()
    # Until the child ignores them: a Ctrl-C now is the service's to handle, not its.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_SIGNALS)
    try:
        pid = os.fork()
        if pid == 0:
            # Unblocked in the child whatever the service holds while it starts: the fork
            # server ignores them, and its workers must get them (SIGTERM stops a worker).
            child_mask = mask - _HELD_SIGNALS
            _forked(theirs, ours, dataclasses.asdict(options), parent, child_mask, settings)
    except OSError:
        ours.close()
        return None
    finally:  # (in this process only: the child never returns from _forked)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        theirs.close()
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:  # it could not be watched: it must not run
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        ours.close()
        return None
    return ForkedServer(pid, pidfd, ours)


def _single_threaded() -> bool:
    """Tell whether this process has a single thread (counting those Python did not start)."""
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


def _forked(
    control: socket.socket,
    other: socket.socket,
    options: dict[str, Any],
    parent: int,
    mask: set[int | signal.Signals],
    settings: Settings | None,
) -> NoReturn:
    """The child of :func:`fork_server`: become the fork server."""
    try:
        other.close()
        for number in _HELD_SIGNALS:
            signal.signal(number, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        die_with_parent(DEATH_SIGNAL, parent=parent)
        adopt_orphans()  # what the tasks start and leave behind is reaped here
        gc.enable()  # whatever the service's start-up did with it: workers collect garbage
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        _preload_and_serve(control, options, settings)
    except BaseException:
        traceback.print_exc()
    os._exit(1)


def _preload_and_serve(
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


def main() -> NoReturn:
    """Entry point: read the worker options the service wrote, preload, then serve."""
    die_with_parent(DEATH_SIGNAL, parent=int(os.environ.pop(PARENT_ENV)))
    adopt_orphans()
    control = socket.socket(fileno=int(os.environ.pop(CONTROL_FD_ENV)))
    with open(int(os.environ.pop(SETUP_FD_ENV)), "rb") as written:
        setup = json.load(written)
    sys.path[:] = setup["sys_path"]
    known = {f.name for f in dataclasses.fields(WorkerOptions)}
    options = {k: v for k, v in setup["options"].items() if k in known}
    _preload_and_serve(control, options)


if __name__ == "__main__":
    main()

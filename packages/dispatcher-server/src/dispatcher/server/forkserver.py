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
memory file whose descriptor it inherits. What it does once it runs is in
:mod:`dispatcher.server.fork_server_loop`.
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
import traceback
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, NoReturn

from dispatcher.server.fork_server_loop import DEATH_SIGNAL, preload_and_serve
from dispatcher.server.lifeline import adopt_orphans, die_with_parent
from dispatcher.server.worker import WorkerOptions

if TYPE_CHECKING:
    from dispatcher.config import Settings

CONTROL_FD_ENV: Final = "DISPATCHER_FORKSERVER_FD"
"""Environment variable naming the fork server's end of its control socket."""

SETUP_FD_ENV: Final = "DISPATCHER_FORKSERVER_SETUP_FD"
"""Environment variable naming the file a fork server started as a program reads its
settings from."""

PARENT_ENV: Final = "DISPATCHER_FORKSERVER_PARENT"
"""Environment variable with the pid of the service that started the fork server."""


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
        preload_and_serve(control, options, settings)
    except BaseException:
        traceback.print_exc()
    os._exit(1)


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
    preload_and_serve(control, options)


if __name__ == "__main__":
    main()

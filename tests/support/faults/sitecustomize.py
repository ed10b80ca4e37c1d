"""Faults injected into a service subprocess: resources it runs short of, for a while.

Python imports ``sitecustomize`` at start-up from ``sys.path``: a test puts this folder first
on the service's ``PYTHONPATH`` (see :func:`support.faults.fault_env`) and names the faults
in the environment. The service's main process is the one that imported this first; its
fork server is its child, the workers the fork server's children.

- ``DISPATCHER_FAULT_NO_THREADS=<file>``: in the main process, no thread can be started
  (``RuntimeError: can't start new thread``, as when ``RLIMIT_NPROC`` or a container's pids
  limit is reached) until *file* exists.
- ``DISPATCHER_FAULT_WORKER_NO_THREADS=1``: in the workers, no thread can be started.
- ``DISPATCHER_FAULT_NO_FORK=1``: the fork server cannot fork (``BlockingIOError: [Errno 11]
  Resource temporarily unavailable``, as at the process limit).
- ``DISPATCHER_FAULT_NO_SPAWN=1``: the main process can neither fork nor start
  the fork server: ``BlockingIOError``, as at the process limit.
- ``DISPATCHER_FAULT_NOFILE=<soft>[:<hard>]``: the main process starts with this
  ``RLIMIT_NOFILE`` (the hard limit unchanged when not given).
- ``DISPATCHER_FAULT_CPUS=<n>``: the main process may run on its first *n* CPUs only
  (``os.sched_setaffinity``, as under ``taskset`` or a cpuset).
- ``DISPATCHER_FAULT_SIGTERM_ON_IMPORT=<module>``: the main process sends itself SIGTERM
  as it begins to import *module* (a stop signal at that very moment of the start).
"""

from __future__ import annotations

import errno
import os
import resource
import signal
import sys
import threading
from typing import Any

_ROOT_ENV = "DISPATCHER_FAULT_ROOT"

_root = _ROOT_ENV not in os.environ
os.environ.setdefault(_ROOT_ENV, str(os.getpid()))
_depth = 0 if _root else 1
"""0 in the main process, 1 in the fork server, 2 in a worker (and more below)."""


def _forked() -> None:
    global _depth
    _depth += 1


os.register_at_fork(after_in_child=_forked)

_start_thread = threading.Thread.start
_fork = os.fork


def _no_thread_now() -> bool:
    until = os.environ.get("DISPATCHER_FAULT_NO_THREADS")
    if _depth == 0 and until and not os.path.exists(until):
        return True
    return _depth >= 2 and bool(os.environ.get("DISPATCHER_FAULT_WORKER_NO_THREADS"))


def _start(self: threading.Thread, *args: Any, **kwargs: Any) -> None:
    if _no_thread_now():
        raise RuntimeError("can't start new thread")
    _start_thread(self, *args, **kwargs)


def _failing_fork() -> int:
    if _depth == 1:
        raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))
    return _fork()


threading.Thread.start = _start  # type: ignore[method-assign]
if os.environ.get("DISPATCHER_FAULT_NO_FORK"):
    os.fork = _failing_fork

if os.environ.get("DISPATCHER_FAULT_NO_SPAWN") and _root:
    import subprocess

    _execute_child = subprocess.Popen._execute_child  # type: ignore[attr-defined]

    def _no_spawn(self: subprocess.Popen[Any], args: Any, *rest: Any, **kwargs: Any) -> None:
        if "dispatcher.server.forkserver" in list(args):
            raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))
        _execute_child(self, args, *rest, **kwargs)

    def _main_cannot_fork() -> int:
        if _depth == 0:
            raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))
        return _fork()

    os.fork = _main_cannot_fork
    subprocess.Popen._execute_child = _no_spawn  # type: ignore[attr-defined]

_nofile = os.environ.get("DISPATCHER_FAULT_NOFILE")
if _root and _nofile:
    _soft, _, _hard = _nofile.partition(":")
    _limit = resource.getrlimit(resource.RLIMIT_NOFILE)[1] if not _hard else int(_hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (int(_soft), _limit))

_cpus = os.environ.get("DISPATCHER_FAULT_CPUS")
if _cpus and _root:
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: int(_cpus)])


class _SigtermOnImport:
    """A finder that finds nothing, but sends SIGTERM as *module* is first looked for."""

    def __init__(self, module: str) -> None:
        self.module = module

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == self.module and _depth == 0:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGTERM)


_sigterm_on = os.environ.get("DISPATCHER_FAULT_SIGTERM_ON_IMPORT")
if _root and _sigterm_on:
    sys.meta_path.insert(0, _SigtermOnImport(_sigterm_on))

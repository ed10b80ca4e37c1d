"""What runs inside a worker subprocess: import the task modules, then run tasks on request.

The service starts workers through a multiprocessing fork server that has already imported
the task modules, so a new worker is ready in milliseconds. A worker reads requests from its
socket, runs the registered task named by each, and reports the outcome. Task code runs
only here, never in the service's main process.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import importlib
import inspect
import json
import logging
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

from dispatcher.publish import registry
from dispatcher.server.protocol import BlockingLineSocket, event_line

logger = logging.getLogger("dispatcher.worker")

_PR_SET_PDEATHSIG = 1


class BoundTask:
    """What a ``bind=True`` task receives first: facts about its own run."""

    def __init__(self, uuid: str, worker_id: int) -> None:
        self.uuid = uuid
        """The uuid of the message being run."""
        self.worker_id = worker_id
        """The id of the worker running it."""


def import_task_modules(modules: Sequence[str]) -> None:
    """Import the modules whose ``@task`` functions may run (errors propagate)."""
    for module in modules:
        importlib.import_module(module)


PRELOAD_ENV = "DISPATCHER_WORKER_PRELOAD"
"""Environment variable with the task modules the fork server imports, comma-separated."""


def preload_task_modules() -> None:
    """Import the task modules named in ``$DISPATCHER_WORKER_PRELOAD``, ignoring failures.

    Runs in the fork server (see :mod:`dispatcher.server.preload`), so that each worker
    forked from it starts with the modules loaded. A module that fails to import is imported
    again by each worker, which reports the error to the service.
    """
    for module in filter(None, os.environ.get(PRELOAD_ENV, "").split(",")):
        try:
            importlib.import_module(module)
        except BaseException:
            continue


def worker_main(
    sock: socket.socket, worker_id: int, modules: Sequence[str], log_level: int
) -> None:
    """Entry point of a worker process."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the service's to handle
    logging.basicConfig(
        level=log_level,
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s worker-{worker_id} %(name)s: %(message)s",
    )
    channel = BlockingLineSocket(sock)
    try:
        import_task_modules(modules)
    except BaseException:
        channel.send(event_line({"event": "fatal", "error": traceback.format_exc()}))
        return
    channel.send(
        event_line({"event": "ready", "pid": os.getpid(), "tasks": sorted(registry.names())})
    )
    runner = TaskRunner(worker_id)
    try:
        while (line := channel.read()) is not None:
            request = json.loads(line)
            if request["op"] == "stop":
                break
            channel.send(event_line(runner.run(request["message"])))
    finally:
        runner.close()


class TaskRunner:
    """Runs task messages in this process; sync functions directly, coroutines on a loop."""

    def __init__(self, worker_id: int) -> None:
        self.worker_id = worker_id
        self._loop: asyncio.Runner | None = None

    def run(self, message: Mapping[str, Any]) -> dict[str, Any]:
        """Run one task message; return its ``done`` event."""
        uuid = message.get("uuid", "")
        started = time.time()
        try:
            self._call(message)
        except Exception as exc:
            return {
                "event": "done",
                "uuid": uuid,
                "outcome": "error",
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(),
                "started": started,
                "finished": time.time(),
            }
        return {
            "event": "done",
            "uuid": uuid,
            "outcome": "ok",
            "started": started,
            "finished": time.time(),
        }

    def _call(self, message: Mapping[str, Any]) -> None:
        entry = registry.get(message["task"])
        if entry is None:  # the service checks names first; a worker re-checks
            raise LookupError(f"task {message['task']!r} is not registered in this worker")
        args = list(message.get("args", ()))
        if entry.bind or message.get("bind") is True:
            args.insert(0, BoundTask(message.get("uuid", ""), self.worker_id))
        kwargs = message.get("kwargs", {})
        function = entry.target().run if entry.is_class else entry.target
        result = function(*args, **kwargs)
        if inspect.isawaitable(result):
            if self._loop is None:
                self._loop = asyncio.Runner()
            self._loop.run(_awaited(result))

    def close(self) -> None:
        """Release the event loop of ``async def`` tasks, if one was made."""
        if self._loop is not None:
            self._loop.close()


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _die_with_parent() -> None:
    """Have the kernel kill this worker when the fork server (so, the service) goes away."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)

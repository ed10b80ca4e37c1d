"""What runs inside a worker subprocess: import the task modules, then run tasks on request.

The service starts workers through its fork server (:mod:`dispatcher.server.forkserver`),
which has already imported the task modules, so a new worker is ready in milliseconds. A
worker reads requests from its socket, runs the registered task named by each, and reports
the outcome. Task code runs only here, never in the service's main process.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import json
import os
import signal
import socket
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dispatcher.publish import DispatcherCancel, DispatcherExit, registry
from dispatcher.server.capture import OutputCapture
from dispatcher.server.hooks import BaseWorker
from dispatcher.server.logsafe import get_logger, log_to
from dispatcher.server.protocol import BlockingLineSocket, event_line
from dispatcher.server.results import encode_result

logger = get_logger("dispatcher.worker")


class BoundTask:
    """What a ``bind=True`` task receives first: facts about its run, and a line home."""

    def __init__(self, uuid: str, worker_id: int, channel: BlockingLineSocket) -> None:
        self.uuid = uuid
        """The uuid of the message being run."""
        self.worker_id = worker_id
        """The id of the worker running it."""
        self._channel = channel

    def control(self, command: str, data: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Run a control command in this worker's service and return its reply.

        It travels over the worker's own connection to the service, not the broker. Commands
        here: ``run`` (start a task; needs ``producers.control``), ``running``, ``cancel``.
        """
        request = {"event": "control", "command": command, "data": dict(data or {})}
        # A cancel arriving mid-send would cut the line in two: hold it until the line is out.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        try:
            self._channel.send(event_line(request))
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
        reply: dict[str, Any] = json.loads(self._channel.read_reply())["reply"]
        return reply


def import_task_modules(modules: Sequence[str]) -> None:
    """Import the modules whose ``@task`` functions may run (errors propagate)."""
    for module in modules:
        importlib.import_module(module)


def import_task_modules_quietly(modules: Sequence[str]) -> None:
    """Import *modules*, ignoring failures (the fork server preloads them this way).

    A module that fails to import here is imported again by each worker, which reports the
    error to the service.
    """
    for module in modules:
        try:
            importlib.import_module(module)
        except BaseException:
            continue


@dataclass(frozen=True)
class WorkerOptions:
    """What a worker needs to know, passed from the service (picklable)."""

    worker_id: int
    modules: tuple[str, ...]
    hooks_class: str | None
    idle_timeout: float | None
    log_level: int
    max_output_bytes: int = 65536
    """Bytes of each task's output kept for the log (``worker.max_output_bytes``)."""


def worker_main(sock: socket.socket, options: WorkerOptions) -> None:
    """Entry point of a worker process (called in the child the fork server forked)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the service's to handle
    capture = OutputCapture(options.max_output_bytes)
    log_to(
        capture.start(),
        options.log_level,
        f"%(asctime)s %(levelname)s worker-{options.worker_id} %(name)s: %(message)s",
    )
    channel = BlockingLineSocket(sock)
    try:
        import_task_modules(options.modules)
        hooks = _load_hooks(options.hooks_class, options.worker_id)
    except BaseException:
        capture.close()
        channel.send(event_line({"event": "fatal", "error": traceback.format_exc()}))
        return
    runner = TaskRunner(options.worker_id, channel, hooks, capture)
    signal.signal(signal.SIGUSR1, runner.on_cancel_signal)
    _call_hook(hooks.on_start)
    channel.send(event_line(_ready_event()))
    try:
        while True:
            try:
                line = channel.read(timeout=options.idle_timeout)
            except TimeoutError:
                _call_hook(hooks.on_idle)
                continue
            if line is None:
                break
            request = json.loads(line)
            if request["op"] == "stop":
                break
            if request["op"] == "run":
                done = runner.run(request["message"], keep_result=request.get("result") is True)
                channel.send(event_line(done))
                if done["outcome"] == "exit":
                    break
    finally:
        runner.close()
        _call_hook(hooks.on_shutdown)
        capture.close()


def _ready_event() -> dict[str, Any]:
    """The first event: this worker's pid, its registered tasks and their fixed queues."""
    names = sorted(registry.names())
    queues = {}
    for name in names:
        entry = registry.get(name)
        if entry is not None and isinstance(entry.queue, str):
            queues[name] = entry.queue
    return {"event": "ready", "pid": os.getpid(), "tasks": names, "queues": queues}


def _load_hooks(path: str | None, worker_id: int) -> BaseWorker:
    if path is None:
        return BaseWorker(worker_id)
    module_name, _, class_name = path.rpartition(".")
    hooks_class = getattr(importlib.import_module(module_name), class_name, None)
    if not isinstance(hooks_class, type):
        raise TypeError(f"worker.class: {path} is not a class")
    instance = hooks_class(worker_id)
    if not isinstance(instance, BaseWorker):
        raise TypeError(f"worker.class: {path} must subclass dispatcher.server.BaseWorker")
    return instance


def _call_hook(hook: Callable[..., object], *args: Any) -> None:
    try:
        hook(*args)
    except Exception:
        logger.exception("worker hook %s raised; the worker carries on", hook.__name__)


class TaskRunner:
    """Runs task messages in this process; sync functions directly, coroutines on a loop."""

    def __init__(
        self,
        worker_id: int,
        channel: BlockingLineSocket,
        hooks: BaseWorker,
        capture: OutputCapture,
    ) -> None:
        self.worker_id = worker_id
        self._channel = channel
        self._hooks = hooks
        self._capture = capture
        self._loop: asyncio.Runner | None = None
        self._running = False

    def on_cancel_signal(self, signum: int, frame: object) -> None:
        """SIGUSR1: cancel the running task (ignored between tasks)."""
        if self._running:
            raise DispatcherCancel

    def run(self, message: Mapping[str, Any], keep_result: bool = False) -> dict[str, Any]:
        """Run one task message; return its ``done`` event.

        With *keep_result* (the job's broker stores results), the event carries the task's
        return value as JSON text (``result``), or says why it was not kept
        (``result_note``); see :func:`~dispatcher.server.results.encode_result`.
        """
        done: dict[str, Any] = {"event": "done", "uuid": message.get("uuid", "")}
        self._capture.begin(str(message.get("task")), str(done["uuid"]))
        _call_hook(self._hooks.pre_task, message)
        done["started"] = time.time()
        try:
            value = self._call(message)
            done["outcome"] = "ok"
            if keep_result and value is not None:
                result, note = encode_result(value)
                if note is None:
                    done["result"] = result
                else:
                    done["result_note"] = note
        except DispatcherCancel:
            done["outcome"] = "cancelled"
            self._discard_loop()  # a coroutine may have been interrupted mid-step
        except DispatcherExit:
            done["outcome"] = "exit"
        except Exception as exc:
            done.update(
                outcome="error",
                error=f"{type(exc).__name__}: {exc}",
                traceback=traceback.format_exc(),
            )
        done["finished"] = time.time()
        _call_hook(self._hooks.post_task, done)
        self._capture.end()  # its output, logged with its name and uuid
        return done

    def _call(self, message: Mapping[str, Any]) -> Any:
        entry = registry.get(message["task"])
        if entry is None:  # the service checks names first; a worker re-checks
            raise LookupError(f"task {message['task']!r} is not registered in this worker")
        args = list(message.get("args", ()))
        if entry.bind or message.get("bind") is True:
            args.insert(0, BoundTask(message.get("uuid", ""), self.worker_id, self._channel))
        kwargs = message.get("kwargs", {})
        function = entry.target().run if entry.is_class else entry.target
        try:
            self._running = True
            result = function(*args, **kwargs)
            if inspect.isawaitable(result):
                if self._loop is None:
                    self._loop = asyncio.Runner()
                result = self._loop.run(_awaited(result))
        finally:
            self._running = False
        return result

    def _discard_loop(self) -> None:
        if self._loop is not None:
            loop, self._loop = self._loop, None
            with contextlib.suppress(BaseException):
                loop.close()

    def close(self) -> None:
        """Release the event loop of ``async def`` tasks, if one was made."""
        self._discard_loop()


async def _awaited(awaitable: Any) -> Any:
    return await awaitable

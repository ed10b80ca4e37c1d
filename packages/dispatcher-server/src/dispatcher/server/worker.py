"""What runs inside a worker subprocess: import the task modules, then run tasks on request.

The service starts workers through its fork server (:mod:`dispatcher.server.forkserver`),
which has already imported the task modules, so a new worker is ready in milliseconds. A
worker reads requests from its socket, runs the registered task named by each, and reports
the outcome. Task code runs only here, never in the service's main process.

Tasks registered with dispatcherd's ``@task`` count as registered too, when the task modules
use dispatcherd (see :mod:`dispatcher.server.dispatcherd_tasks`). A message's ``callbacks``
and ``errbacks`` (task messages too) run after its task, in the same worker and the same job,
as dispatcherd runs them (see :meth:`TaskRunner.run`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import gc
import importlib
import inspect
import json
import os
import selectors
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from types import FrameType
from typing import Any, Final, NoReturn

from dispatcher.publish import DispatcherCancel, registry
from dispatcher.schema import LogFormat
from dispatcher.server import worker_loop
from dispatcher.server.capture import OutputCapture
from dispatcher.server.dispatcherd_tasks import adopt_dispatcherd_tasks, conventions, is_adopted
from dispatcher.server.hooks import BaseWorker
from dispatcher.server.log_arguments import Block, Phrase
from dispatcher.server.log_records import get_logger
from dispatcher.server.log_setup import log_to, root_left_to_the_app, set_apart
from dispatcher.server.log_text import cut_middle, describe_exception
from dispatcher.server.logformat import worker_formatter
from dispatcher.server.protocol import (
    CANCEL_SIGNALS,
    RECALL_SIGNAL,
    BlockingLineSocket,
    cancel_target,
    event_line,
    read_line,
)
from dispatcher.server.results import encode_result
from dispatcher.server.task_imports import failure
from dispatcher.server.worker_loop import TaskLoop, put_back_thread_loop
from dispatcher.server.worker_signals import Handler, SignalKeeper

logger = get_logger("dispatcher.worker")

MAX_REPORTED_CHARS: Final = 32 * 1024
"""Longest error text, and traceback, that a worker reports for a task (an exception's
message can be as large as the task makes it; the service logs and stores what it gets)."""


LEFTOVER_GRACE: Final = 1.0
"""Seconds the asyncio tasks an ``async def`` task left pending get to end once cancelled."""


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
        # A cancel arriving mid-send would cut the line in two, and one arriving between a
        # read and the keeping of what it read would lose the run requests that came with
        # the reply: hold cancels until the reply is in (the service answers at once).
        signal.pthread_sigmask(signal.SIG_BLOCK, _CANCELLING)
        try:
            self._channel.send(event_line(request))
            line = self._channel.read_reply()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _CANCELLING)
        reply: dict[str, Any] = json.loads(line)["reply"]
        return reply


_CANCELLING = {signal.SIGUSR1, *CANCEL_SIGNALS}
"""The signals that cancel a task (see :data:`~dispatcher.server.protocol.CANCEL_SIGNALS`)."""


def _stopped(capture: OutputCapture, worker_pid: int, signum: int, frame: object) -> None:
    """SIGTERM: log what the task wrote so far, then end as SIGTERM ends a process.

    The service sends it to a task that resisted its cancel (SIGKILL follows if this does
    not end the process in time). A process the task forked inherits this handler: there,
    SIGTERM only ends it, as it would have without the handler.
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if os.getpid() == worker_pid:
        with contextlib.suppress(Exception):  # whatever the interrupted code was holding
            capture.salvage()
    os.kill(os.getpid(), signal.SIGTERM)


@dataclass(frozen=True)
class WorkerOptions:
    """What a worker needs to know, passed from the service (picklable)."""

    worker_id: int
    modules: tuple[str, ...]
    hooks_class: str | None
    idle_timeout: float | None
    log_level: int
    log_format: LogFormat = "text"
    """How the worker writes its own lines (``service.log_format``)."""
    max_output_bytes: int = 65536
    """Bytes of each task's output kept for the log (``worker.max_output_bytes``)."""
    config: Mapping[str, Any] | None = None
    """The service's config document, installed as the config in force in the fork server
    (so in every worker) before the task modules are imported; ``None`` when it cannot
    travel as JSON (the fork server then keeps what it inherited)."""
    config_source: str = "config"
    """Where :attr:`config` came from, as the service's config names it."""


def worker_main(sock: socket.socket, options: WorkerOptions) -> None:
    """Entry point of a worker process (called in the child the fork server forked)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the service's to handle
    capture = OutputCapture(options.max_output_bytes)
    stream = capture.start()  # (the app's handlers to fds 1 and 2 now write past it)
    log_format = worker_formatter(options.log_format, options.worker_id)
    log_to(stream, options.log_level, log_format)  # (root handlers the task modules set kept)
    set_apart(logger.name, stream, options.log_level, log_format)  # (tasks configure logging)
    channel = BlockingLineSocket(sock)
    try:
        with root_left_to_the_app():  # (imports may set the app's logging up: basicConfig())
            hooks = _start(options)
    except _StartFailed as failed:  # said as the start-up checks say it: no traceback
        capture.close()
        error = str(failed.report.get("error"))
        channel.send(event_line({"event": "fatal", "error": error, "report": failed.report}))
        return
    except BaseException:
        capture.close()
        channel.send(
            event_line({"event": "fatal", "error": _capped(traceback.format_exc(), whole=True)})
        )
        return
    runner = TaskRunner(options.worker_id, channel, hooks, capture)
    runner.signals.install()
    os.register_at_fork(after_in_child=_note_fork)
    _call_hook(hooks.on_start)
    runner.signals.keep("on_start")  # its alarm cancelled, the handlers it set kept
    adopt_dispatcherd_tasks()  # after every import: the task modules, the hooks, on_start
    capture.keep_streams()  # as the hooks and the imports left them: what tasks get back
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
            request = read_line(line)
            if request["op"] == "stop":
                break
            if request["op"] == "run":
                runner.requests += 1
                done = runner.take(request)
                channel.send(event_line(done))
                if done["outcome"] == "exit":
                    break
    finally:
        runner.close()
        _call_hook(hooks.on_shutdown)
        capture.close()


def _ready_event() -> dict[str, Any]:
    """The first event: this worker's pid, its registered tasks and their fixed queues.

    Also the ``max_attempts`` and the ``timeout`` of the tasks that set one.
    """
    names = sorted(registry.names())
    queues, attempts, timeouts = {}, {}, {}
    for name in names:
        entry = registry.get(name)
        if entry is None:
            continue
        if isinstance(entry.queue, str):
            queues[name] = entry.queue
        if entry.max_attempts is not None:
            attempts[name] = entry.max_attempts
        if entry.timeout is not None:
            timeouts[name] = entry.timeout
    return {
        "event": "ready",
        "pid": os.getpid(),
        "tasks": names,
        "queues": queues,
        "max_attempts": attempts,
        "timeouts": timeouts,
    }


class _StartFailed(Exception):
    """A task module, or the module of ``worker.class``, cannot be imported."""

    def __init__(self, report: dict[str, Any]) -> None:
        super().__init__(report.get("error"))
        self.report = report
        """What :func:`~dispatcher.server.task_imports.failure` says, and ``field``."""


def _start(options: WorkerOptions) -> BaseWorker:
    """Import the task modules and the module of ``worker.class``; return the hooks.

    :raises _StartFailed: when one cannot be imported (the fork server imported them when it
        started, but one may fail since: a fork server replaced imports them afresh).
    """
    for module in options.modules:
        try:
            importlib.import_module(module)
        except BaseException as exc:
            raise _StartFailed({**failure(module, exc), "field": "tasks.modules"}) from None
    path = options.hooks_class
    if path is not None:
        module = path.rpartition(".")[0]
        try:
            importlib.import_module(module)
        except BaseException as exc:
            report = {**failure(module, exc), "field": "worker.class", "name": path}
            raise _StartFailed(report) from None
    return _load_hooks(path, options.worker_id)


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
    finally:
        if _FORKED[0]:
            _exit_forked("worker hook %s", hook.__name__)


_FORKED: Final = [False]
"""Whether this process is a child that ``os.fork()`` made of the worker (set in the child,
see :func:`worker_main`): a check cheaper than ``os.getpid()``, for every hook called."""


def _note_fork() -> None:
    _FORKED[0] = True


def _exit_forked(what: str, *args: object) -> NoReturn:
    """End this process: a child that *what* forked, returning into the worker's code.

    Left to go on, it would be a second worker on the same socket: it would report the end
    of the task as well, and read the next requests. ``what`` and ``args`` are a log format.
    Called while a ``SystemExit`` propagates (``sys.exit(0)`` in the child), it exits with
    that status, as the child meant to, its standard streams flushed first.
    """
    leaving = sys.exc_info()[1]
    if isinstance(leaving, SystemExit):
        status = _exit_status(leaving)
    else:
        status = 1
        with contextlib.suppress(BaseException):
            logger.error(
                f"a process forked by {what} returned into the worker (pid %d): it exits "
                "(a forked child must end with os._exit())",
                *args,
                os.getpid(),
            )
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()
    os._exit(status)


def _exit_status(request: SystemExit) -> int:
    """The status a process ends with on *request*, as Python's own exit gives it."""
    code = request.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    with contextlib.suppress(BaseException):
        print(code, file=sys.stderr)  # as Python prints a message given to sys.exit()
    return 1


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
        self._loop: TaskLoop | None = None
        """The event loop of ``async def`` tasks, made at the first one."""
        self._loop_interrupted = False
        """Whether a cancel was raised in the code of that loop itself, which it may have
        left halfway through a change of its state: the loop is then replaced."""
        self._told_leftovers = False
        """Whether the asyncio tasks an ``async def`` task left pending were logged."""
        self._running = False
        self.requests = 0
        """Run requests received so far: the number of the one being run."""
        self._started = 0
        """The number of the last request started."""
        self._ended = True
        """Whether that request has ended."""
        self._cancelled: set[int] = set()
        """Requests cancelled before they started (they end ``cancelled`` without running)."""
        self._recalled_after: int | None = None
        """Set by :data:`RECALL_SIGNAL`: the last request started then; every later one is
        ended unstarted (``recalled``)."""
        self._conventions = conventions()
        self._cancel: type[BaseException] = DispatcherCancel
        """What a cancel raises in the task running (dispatcherd's too, for its tasks)."""
        self._async_task: asyncio.Task[Any] | None = None
        """The asyncio task running an ``async def`` task, while it runs."""
        self._cancel_due = False
        """Whether the next ``CancelledError`` thrown into that task is a cancel of ours."""
        handlers: dict[int, Handler] = {signal.SIGUSR1: self.on_cancel_signal}
        handlers.update(dict.fromkeys(CANCEL_SIGNALS, self.on_cancel_request))
        handlers[RECALL_SIGNAL] = self.on_recall_signal
        self._pid = os.getpid()
        handlers[signal.SIGTERM] = functools.partial(_stopped, capture, self._pid)
        self.signals = SignalKeeper(handlers)
        """The worker's handlers of the signals it reserves, put back after each task."""

    def on_cancel_signal(self, signum: int, frame: FrameType | None) -> None:
        """SIGUSR1: cancel the running task (ignored between tasks)."""
        if self._running:
            self._cancel_running(frame)

    def on_cancel_request(self, signum: int, frame: FrameType | None) -> None:
        """One of :data:`CANCEL_SIGNALS`: cancel the request it names, now or before it starts."""
        target = cancel_target(signum, self._started)
        if target is None or (target == self._started and self._ended):
            return  # that request has already ended
        if target == self._started and self._running:
            self._cancel_running(frame)
        self._cancelled.add(target)

    def _cancel_running(self, frame: FrameType | None) -> None:
        """Raise the cancel exception in the running task, *frame* being where it is now.

        An ``async def`` task's event loop waiting for I/O or a timer, or busy with its own
        work, is not the task's code: there, the exception would come out of the loop, and
        the coroutine would only see a ``CancelledError`` as the loop closes, so that its
        ``except DispatcherCancel:`` would never run. So the asyncio task is cancelled
        instead, and the ``CancelledError`` that brings into the coroutine is turned into
        the cancel exception (:class:`_CancelTranslator`).
        """
        task = self._async_task
        if task is None:
            loop = self._loop
            if loop is not None and loop.loop.is_running():  # (between the task's steps)
                self._loop_interrupted = True
            raise self._cancel
        if _in_coroutine_step(frame):  # as the translation would have made it
            if _in_event_loop_code(frame):
                self._loop_interrupted = True
            raise _cancellation(self._cancel)
        self._cancel_due = True
        task.cancel()
        task.get_loop().call_soon_threadsafe(_nothing)  # wakes the loop from its wait

    def translated(self, exc: asyncio.CancelledError) -> BaseException:
        """What to throw into an async task's coroutine for *exc*, thrown into its task."""
        if not self._cancel_due:
            return exc  # the coroutine's own doing (asyncio.timeout(), say)
        self._cancel_due = False
        return _cancellation(self._cancel)()

    def on_recall_signal(self, signum: int, frame: object) -> None:
        """:data:`RECALL_SIGNAL`: end unstarted every request not started yet (a reload)."""
        if self._recalled_after is None:
            self._recalled_after = self._started

    def _forget_cancels(self) -> None:
        """Forget the cancels of requests up to the one started last: they are over.

        The set changes in place, and is read through a copy made in one step: a cancel
        signal's handler may add to it at any moment (a set changed while iterated raises).
        """
        self._cancelled.difference_update([n for n in tuple(self._cancelled) if n <= self._started])

    def take(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """Take up run request number :attr:`requests`: run it, or end it unstarted.

        It ends unstarted when the worker's jobs were recalled before it started
        (:data:`RECALL_SIGNAL`), or when it came after its ``start_by``. Returns its ``done``
        event.
        """
        # Counted as started first: a recall signal coming after this line lets it run,
        # one coming before has it end unstarted. Either way the report says which.
        self._started, self._ended = self.requests, False
        recalled_after = self._recalled_after
        if recalled_after is not None and self._started > recalled_after:
            return self.unstarted(request["message"], "recalled")
        start_by = request.get("start_by")
        if isinstance(start_by, float) and time.monotonic() >= start_by:
            return self.unstarted(request["message"], "expired")
        return self.run(request["message"], keep_result=request.get("result") is True)

    def unstarted(self, message: Mapping[str, Any], why: str) -> dict[str, Any]:
        """End the current request unstarted, for the reason *why* (``recalled`` or ``expired``).

        Its ``done`` event says *why* (the service gives the job back), or ``cancelled`` if
        it was cancelled meanwhile.
        """
        self._started, self._ended = self.requests, True
        outcome = "cancelled" if self._started in self._cancelled else why
        self._forget_cancels()
        now = time.time()
        uuid = message.get("uuid", "")
        return {
            "event": "done",
            "uuid": uuid,
            "outcome": outcome,
            "started": now,
            "finished": now,
            "run_time": 0.0,
        }

    def run(self, message: Mapping[str, Any], keep_result: bool = False) -> dict[str, Any]:
        """Run one task message; return its ``done`` event.

        With *keep_result* (the job's broker stores results), the event carries the task's
        return value as JSON text (``result``), or says why it was not kept
        (``result_note``); see :func:`~dispatcher.server.results.encode_result`.

        Then, as dispatcherd does: if the task raised, each of the message's ``errbacks``
        runs; then, whether it raised or not, each of its ``callbacks``. They are task
        messages of their own (``task``, ``args``, ``kwargs``, ``bind``, and their own
        ``callbacks`` and ``errbacks``), run in this worker, one after the other, with the
        message's ``uuid``; what they return is dropped, and one that raises is logged and
        does not stop the others. They belong to the job: its timeout covers them, and a
        cancel stops them (the job ends ``cancelled``). Neither runs after a task that was
        cancelled or raised ``DispatcherExit`` (dispatcherd runs ``callbacks`` after a
        cancelled task: here a cancel ends the job, which is ended by force if it goes on).
        """
        self._started, self._ended = self.requests, False
        done: dict[str, Any] = {"event": "done", "uuid": message.get("uuid", "")}
        self._capture.begin(str(message.get("task")), str(done["uuid"]))
        _call_hook(self._hooks.pre_task, message)
        # When it started and ended are points in time (the wall clock); how long it ran is
        # measured on the monotonic clock, which a step of the wall clock does not move.
        done["started"] = time.time()
        began = time.monotonic()
        try:
            value = self._call(message)
            done["outcome"] = "ok"
            if keep_result and value is not None:
                result, note = encode_result(value)
                if note is None:
                    done["result"] = result
                else:
                    done["result_note"] = note
        except self._conventions.cancels:
            done["outcome"] = "cancelled"
        except self._conventions.exits:
            done["outcome"] = "exit"
        except BaseException as exc:  # SystemExit, KeyboardInterrupt...: errors of the task
            error = describe_exception(exc)
            if _does_not_fit(exc):
                error += f" ({_NOT_RETRIED})"
                done["final"] = True
            elif isinstance(exc, NotRegisteredHere) and registry.get(message["task"]) is None:
                done["unregistered"] = True  # never ran: counted as refused, not by its name
            done.update(
                outcome="error",
                error=_capped(error),
                traceback=_capped(_traceback_of(exc), whole=True),
            )
        if done["outcome"] in ("ok", "error") and _has_follow_ups(message):
            self._follow_up(message, done)
        if done["outcome"] == "cancelled":
            # What a cancel cut short and left for the garbage collector (a trio run
            # abandoned: its coroutines' finally blocks, its warnings) is freed now, within
            # this task, not during a later one.
            gc.collect()
        put_back_thread_loop()
        self._ended = True
        self._forget_cancels()
        done["run_time"] = time.monotonic() - began
        done["finished"] = time.time()
        _call_hook(self._hooks.post_task, done)
        self.signals.check(message.get("task"), done["uuid"])
        self._capture.end()  # its output, logged with its name and uuid
        return done

    def _follow_up(self, message: Mapping[str, Any], done: dict[str, Any]) -> None:
        """Run the errbacks and callbacks of *message*, whose task ended as *done* says."""
        uuid = str(done["uuid"])
        ended = self._follow_ups(message, uuid, failed=done["outcome"] == "error")
        if ended == "cancelled":
            done["outcome"] = "cancelled"
            for key in ("result", "result_note", "error", "traceback"):
                done.pop(key, None)
        elif ended == "exit" and done["outcome"] == "ok":
            done["outcome"] = "exit"
        elif ended == "exit":  # the job failed: that is what the service must hear
            logger.warning(
                "task %s (uuid %s): DispatcherExit in one of its errbacks or callbacks is "
                "ignored after the task failed; the worker carries on",
                message.get("task"),
                uuid,
            )

    def _follow_ups(self, message: Mapping[str, Any], uuid: str, failed: bool) -> str | None:
        """Run the errbacks (if *failed*) then the callbacks of *message*, and theirs.

        Returns ``None``, or ``cancelled`` or ``exit`` when one of them ended so (the rest
        are skipped).
        """
        for kind in ("errbacks", "callbacks") if failed else ("callbacks",):
            for follow_up in message.get(kind) or ():
                ended = self._run_follow_up(follow_up, kind, message, uuid)
                if ended is not None:
                    return ended
        return None

    def _run_follow_up(
        self, follow_up: Mapping[str, Any], kind: str, parent: Mapping[str, Any], uuid: str
    ) -> str | None:
        """Run one errback or callback (it has the *uuid* of the job), then its own."""
        follow_up = {**follow_up, "uuid": uuid}
        try:
            self._call(follow_up)
        except self._conventions.cancels:
            return "cancelled"
        except self._conventions.exits:
            return "exit"
        except BaseException as exc:  # as for the task: SystemExit too is its error
            logger.error(
                "task %s (uuid %s): %s %s failed: %s%s",
                parent.get("task"),
                uuid,
                kind.removesuffix("s"),
                follow_up.get("task"),
                describe_exception(exc),
                Block(_traceback_of(exc)),
            )
            return self._follow_ups(follow_up, uuid, failed=True)
        return self._follow_ups(follow_up, uuid, failed=False)

    def _call(self, message: Mapping[str, Any]) -> Any:
        entry = registry.get(message["task"])
        if entry is None:  # the service checks names first; a worker re-checks
            raise NotRegisteredHere(
                f"task {message['task']!r} is not registered in this worker"
                " (its code no longer registers it: renamed or removed since it was sent?)"
            )
        if self._conventions.cancel is not DispatcherCancel:  # dispatcherd is loaded
            self._cancel = self._conventions.cancel if is_adopted(entry.name) else DispatcherCancel
        args = list(message.get("args", ()))
        if entry.bind or message.get("bind") is True:
            args.insert(0, BoundTask(message.get("uuid", ""), self.worker_id, self._channel))
        kwargs = message.get("kwargs", {})
        function = entry.target().run if entry.is_class else entry.target
        runner = None
        try:
            self._running = True
            if self._started in self._cancelled:  # cancelled while it waited in this worker
                raise DispatcherCancel
            # In a copy of the worker's context, made anew for each task (about 25 ns): what
            # a task leaves in its context variables (a publisher's batch() left open by a
            # cancel landing as it began, which would hold every later submission) never
            # reaches the next task.
            context = contextvars.copy_context()
            result = context.run(function, *args, **kwargs)
            if inspect.isawaitable(result):
                runner = self._runner()
                result = runner.run(_awaited(_CancelTranslator(result, self)), context)
        finally:
            if _FORKED[0] or os.getpid() != self._pid:  # (a fork that os.fork() did not make)
                _exit_forked("task %s (uuid %s)", message["task"], message.get("uuid"))
            self._running = False
            self._async_task, self._cancel_due = None, False
            if runner is not None:
                self._after_async_task(runner, message)
        _refuse_generator(result)
        return result

    def _runner(self) -> TaskLoop:
        """The event loop of ``async def`` tasks: made anew if it was closed (by a task)."""
        runner = self._loop
        if runner is None or runner.loop.is_closed():
            runner = self._loop = TaskLoop()
        return runner

    def _after_async_task(self, runner: TaskLoop, message: Mapping[str, Any]) -> None:
        """Put the loop of ``async def`` tasks back in order after one, or replace it.

        It is replaced when a cancel interrupted its own code (it may be halfway through a
        change of its state) or when a task closed it. Otherwise, what the task left on it
        is ended (:meth:`_end_leftovers`), and a thread of its executor still running is
        left to run on: the loop gets a new executor.
        """
        if self._loop_interrupted:
            self._loop_interrupted = False
            self._discard_loop(interrupted=True)
            return
        loop = runner.loop
        if loop.is_closed():
            return  # (replaced before the next task)
        ready = getattr(loop, "_ready", None)  # callbacks due (an async generator's closing)
        if _EVERY_TASK is None or _EVERY_TASK or ready is None or ready:
            self._end_leftovers(loop, message)
        runner.renew_threads()

    def _end_leftovers(self, loop: asyncio.AbstractEventLoop, message: Mapping[str, Any]) -> None:
        """Cancel the asyncio tasks an ``async def`` task left pending, as ``asyncio.run`` does.

        First the callbacks it left due run, and the async generators it dropped unfinished
        (closed by asyncio in tasks of their own) get :data:`LEFTOVER_GRACE` seconds to run
        their ``finally``. Then each task still pending is cancelled, and gets
        :data:`LEFTOVER_GRACE` seconds to end; a loop with some still pending then is closed
        as it is (a new one runs the next task), so none runs in a later task.
        """
        own: list[asyncio.Task[Any]] = []  # (left pending if interrupted: not the task's)
        try:
            own.append(loop.create_task(asyncio.sleep(0)))
            loop.run_until_complete(own[-1])  # (the callbacks due run first)
            closing = {task for task in asyncio.all_tasks(loop) if _closes_a_generator(task)}
            if closing:
                own.append(loop.create_task(asyncio.wait(closing, timeout=LEFTOVER_GRACE)))
                loop.run_until_complete(own[-1])
        except BaseException:  # one raised what a loop lets through (SystemExit...)
            pass
        left = asyncio.all_tasks(loop)
        if not left:
            return
        strays = {task for task in left.difference(own) if not _closes_a_generator(task)}
        if strays and not self._told_leftovers:
            self._told_leftovers = True
            logger.warning(
                "task %s (uuid %s) left asyncio tasks pending, cancelled when it ended: %s; a "
                "client bound to the event loop that runs a task of its own (a websocket's "
                "keepalive, a Kafka producer's sender) does not survive between tasks: create "
                "it in each task (said once per worker)",
                message.get("task"),
                message.get("uuid"),
                _describe_tasks(strays),
            )
        for task in left:
            task.cancel()
        try:
            pending = loop.run_until_complete(asyncio.wait(left, timeout=LEFTOVER_GRACE))[1]
        except BaseException:  # one raised what a loop lets through (SystemExit...)
            pending = left
        for task in left - pending:
            error = None if task.cancelled() else task.exception()
            if error is not None:
                logger.warning(
                    "task %s (uuid %s) left an asyncio task pending that raised on its cancel: %s",
                    message.get("task"),
                    message.get("uuid"),
                    describe_exception(error),
                )
        if pending:
            logger.warning(
                "task %s (uuid %s) left asyncio tasks pending that did not end on their cancel "
                "(within %g s): their event loop is closed, a new one runs the next task",
                message.get("task"),
                message.get("uuid"),
                LEFTOVER_GRACE,
            )
            self._discard_loop()

    def _discard_loop(self, interrupted: bool = False) -> None:
        """Close the loop of ``async def`` tasks: the next one gets a new loop.

        The async generators left open on it are closed first (see :meth:`TaskLoop.close`),
        unless a cancel *interrupted* the loop's own code: it is closed as it is then.
        """
        if self._loop is not None:
            loop, self._loop = self._loop, None
            with contextlib.suppress(BaseException):
                loop.close(None if interrupted else LEFTOVER_GRACE)

    def close(self) -> None:
        """Release the event loop of ``async def`` tasks, if one was made.

        The async generators tasks kept open are closed (each gets its ``finally`` run, for
        up to :data:`LEFTOVER_GRACE` seconds in all); threads of its executor still running
        are not waited for.
        """
        self._discard_loop()


def _closes_a_generator(task: asyncio.Task[Any]) -> bool:
    """Whether *task* is asyncio closing an async generator dropped unfinished (``aclose()``)."""
    return type(task.get_coro()).__name__ == "async_generator_athrow"


def _describe_tasks(tasks: set[asyncio.Task[Any]], most: int = 5) -> Phrase:
    """``ticks() (asyncio task Task-3), ...``: the coroutine and name of *most* of *tasks*."""
    described = []
    for task in list(tasks)[:most]:
        coroutine = task.get_coro()
        name = getattr(coroutine, "__qualname__", None) or type(coroutine).__name__
        described.append(Phrase("%s() (asyncio task %s)", name, task.get_name()))
    return Phrase.joined(", ", described, more=len(tasks) - most)


def _task_registry() -> set[Any] | None:
    """The set of asyncio's references to every task not yet freed, if one can be read.

    Empty, no task of any event loop is left: known at once, where ``asyncio.all_tasks()``
    costs a few microseconds a task. ``None`` where asyncio keeps no such set (Python 3.14
    keeps its own tasks in lists of its own, and ``all_tasks()`` is quick there).
    """
    if sys.version_info >= (3, 14):
        return None
    registry = getattr(asyncio.tasks, "_all_tasks", None)  # Python 3.11
    if registry is None:
        registry = getattr(asyncio.tasks, "_scheduled_tasks", None)  # 3.12, 3.13
    data = getattr(registry, "data", None)  # a WeakSet's own set
    return data if isinstance(data, set) else None


_EVERY_TASK: Final = _task_registry()
"""See :func:`_task_registry`: checked after each ``async def`` task before asking more."""


class NotRegisteredHere(LookupError):
    """A job names a task the worker's code does not register (changed since it was sent)."""


class GeneratorReturned(TypeError):
    """A task returned a generator: its body never ran (a generator function is no task)."""


def _refuse_generator(result: object) -> None:
    """Raise :class:`GeneratorReturned` when *result* is a generator (closed first).

    ``@task`` refuses generator functions, but a decorator can hide one, and a function may
    return a generator: ending ``ok`` would pass off a body that never ran as done.
    """
    if inspect.isgenerator(result):
        result.close()  # not started: no code of the task runs
        kind = "a generator"
    elif inspect.isasyncgen(result):
        kind = "an async generator"  # not started: it needs no closing
    else:
        return
    raise GeneratorReturned(
        f"the task returned {kind}: its body never ran; a task must do its work when called "
        "(a plain or async def function that does not yield), returning the values in a list"
    )


class _CancelTranslator:
    """Awaits an ``async def`` task's awaitable step by step, as ``await`` would.

    Except that a ``CancelledError`` thrown in for a cancel of the service's reaches the
    task's code as the cancel exception (``DispatcherCancel``), as in a plain function task.
    """

    __slots__ = ("_awaitable", "_runner")

    def __init__(self, awaitable: Any, runner: TaskRunner) -> None:
        self._awaitable = awaitable
        self._runner = runner

    def __await__(self) -> Generator[Any, Any, Any]:
        steps = self._awaitable.__await__()
        self._runner._async_task = asyncio.current_task()
        sent: Any = None
        thrown: BaseException | None = None
        while True:
            try:
                yielded = steps.send(sent) if thrown is None else steps.throw(thrown)
            except StopIteration as stop:
                return stop.value
            sent, thrown = None, None
            try:
                sent = yield yielded
            except GeneratorExit:
                steps.close()
                raise
            except asyncio.CancelledError as exc:
                thrown = self._runner.translated(exc)
            except BaseException as exc:  # thrown in by the task: passed on, as await does
                thrown = exc


_STEP_CODE: Final = _CancelTranslator.__await__.__code__


_CANCELLATIONS: dict[type[BaseException], type[BaseException]] = {}


def _cancellation(cancel: type[BaseException]) -> type[BaseException]:
    """*cancel* (``DispatcherCancel``) that is also asyncio's ``CancelledError``.

    Thrown into an async task's coroutine, it is caught by the task's ``except
    DispatcherCancel:``, and by what asyncio runs between the task and the loop as the
    cancellation it is: ``wait_for()`` cancels its inner task, a lock its waiter.
    """
    made = _CANCELLATIONS.get(cancel)
    if made is None:
        try:
            made = type(cancel.__name__, (cancel, asyncio.CancelledError), {})
        except TypeError:  # a cancel exception whose layout forbids it: itself, then
            made = cancel
        _CANCELLATIONS[cancel] = made
    return made


def _in_coroutine_step(frame: FrameType | None) -> bool:
    """Whether *frame* is code that a step of an async task's coroutine runs (its own)."""
    while frame is not None and frame.f_back is not None:
        if frame.f_back.f_code is _STEP_CODE:
            return True
        frame = frame.f_back
    return False


def _in_event_loop_code(frame: FrameType | None) -> bool:
    """Whether *frame*, the innermost frame of a step of a coroutine, is asyncio's own code."""
    if frame is None:
        return False
    path = os.path.abspath(frame.f_code.co_filename)
    return os.path.dirname(path) == _ASYNCIO_DIR or path == _SELECTORS_FILE


def _nothing() -> None:
    """A callback that does nothing: scheduled to wake an event loop up."""


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


_RUNNER_FILES: Final = frozenset({os.path.abspath(__file__), os.path.abspath(worker_loop.__file__)})
_ASYNCIO_DIR: Final = os.path.dirname(os.path.abspath(asyncio.__file__))
_SELECTORS_FILE: Final = os.path.abspath(selectors.__file__)


def task_traceback(exc: BaseException) -> str:
    """The traceback of *exc*, raised by a task, from the task's own code on.

    The frames of this module (and of the asyncio runner between it and an ``async def``
    task) that lead to the task are left out: they are the same for every task and tell its
    author nothing. So are the worker's frames between the task's (see :func:`_drop_steps`),
    where an exception came through a future it awaited (``asyncio.gather()``). Chained
    exceptions are shown whole but for those. When every frame is this module's (the task was never
    reached), the traceback is shown whole.
    """
    first = exc.__traceback__
    while first is not None and _is_runner_frame(first.tb_frame.f_code.co_filename):
        first = first.tb_next
    shown = first if first is not None else exc.__traceback__
    try:
        rendered = traceback.TracebackException(type(exc), exc, shown, compact=True)
        _drop_steps(rendered)
        return "".join(rendered.format())
    except BaseException as failure:  # the task's exception fails its own rendering (notes)
        return f"(its traceback could not be shown: {describe_exception(failure)})"


def _drop_steps(rendered: traceback.TracebackException) -> None:
    """Leave the worker's frames between the task's own out of *rendered*, and its chain.

    Those are the steps of :class:`_CancelTranslator`, and the worker's way back into the
    task's code: its frames (``_call``, the loop's ``run``) and those of asyncio's event
    loop that follow them (where an exception the loop lets through, ``KeyboardInterrupt``
    from a gathered child, came out of the loop and was raised again in the task).
    """
    seen: set[int] = set()
    waiting = [rendered]
    while waiting:
        one = waiting.pop()
        if id(one) in seen:
            continue
        seen.add(id(one))
        if any(_is_runner_frame(frame.filename) for frame in one.stack):
            one.stack = traceback.StackSummary.from_list(_tasks_frames(one.stack))
        waiting.extend(e for e in (one.__cause__, one.__context__) if e is not None)
        waiting.extend(one.exceptions or ())


def _tasks_frames(stack: list[traceback.FrameSummary]) -> list[traceback.FrameSummary]:
    """*stack* without the worker's steps, nor its frames that lead back to the task's code.

    asyncio's frames right after such a frame of the worker's are its event loop's: out too.
    """
    kept: list[traceback.FrameSummary] = []
    at = 0
    while at < len(stack):
        frame = stack[at]
        if os.path.abspath(frame.filename) in _RUNNER_FILES:
            end = at + 1
            while end < len(stack) and _is_runner_frame(stack[end].filename):
                end += 1
            if end < len(stack):  # (the task's code follows)
                at = end
                continue
        if not _is_step(frame):
            kept.append(frame)
        at += 1
    return kept


def _is_step(frame: traceback.FrameSummary) -> bool:
    return frame.name == "__await__" and os.path.abspath(frame.filename) in _RUNNER_FILES


def _traceback_of(exc: BaseException) -> str:
    """The traceback to show for *exc*: none where the worker's own frames are all it holds.

    That is when the worker found no task, or when the task returned a generator.
    """
    if isinstance(exc, NotRegisteredHere | GeneratorReturned):
        return ""
    return task_traceback(exc)


_NOT_RETRIED: Final = "the task's code never ran: its arguments do not fit it; not retried"


def _does_not_fit(exc: BaseException) -> bool:
    """Whether *exc* says the message's arguments do not fit the task's signature.

    That is a ``TypeError`` raised before any frame of the task's own code (by the call
    itself): no later attempt of the same message can end otherwise.
    """
    if type(exc) is not TypeError:
        return False
    frame = exc.__traceback__
    while frame is not None:
        if not _is_runner_frame(frame.tb_frame.f_code.co_filename):
            return False
        frame = frame.tb_next
    return True


def _capped(text: str, whole: bool = False) -> str:
    """*text*, cut to :data:`MAX_REPORTED_CHARS`, saying how much was left out and where.

    An error's message keeps its start (its type, what went wrong); a traceback (*whole*)
    its start and its end, the frames and what was raised, cutting the middle.
    """
    if whole:
        return cut_middle(text, MAX_REPORTED_CHARS)
    cut = len(text) - MAX_REPORTED_CHARS
    if cut <= 0:
        return text
    return f"{text[:MAX_REPORTED_CHARS]}... ({cut} more characters)"


def _is_runner_frame(filename: str) -> bool:
    path = os.path.abspath(filename)
    return path in _RUNNER_FILES or os.path.dirname(path) == _ASYNCIO_DIR


def _has_follow_ups(message: Mapping[str, Any]) -> bool:
    return bool(message.get("callbacks") or message.get("errbacks"))

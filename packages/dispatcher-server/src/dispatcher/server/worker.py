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
import inspect
import json
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from types import FrameType
from typing import Any, Final

from dispatcher.publish import DispatcherCancel, registry
from dispatcher.schema import LogFormat
from dispatcher.server.capture import OutputCapture
from dispatcher.server.dispatcherd_tasks import adopt_dispatcherd_tasks, conventions, is_adopted
from dispatcher.server.hooks import BaseWorker
from dispatcher.server.log_arguments import Block, Phrase
from dispatcher.server.log_records import get_logger
from dispatcher.server.log_setup import log_to, root_left_to_the_app, set_apart
from dispatcher.server.log_text import describe_exception
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
from dispatcher.server.worker_forks import FORKED, call_hook, exit_forked, note_fork
from dispatcher.server.worker_frames import in_event_loop_code
from dispatcher.server.worker_loop import TaskLoop, put_back_thread_loop
from dispatcher.server.worker_refusals import NotRegisteredHere, refuse_generator
from dispatcher.server.worker_signals import Handler, SignalKeeper
from dispatcher.server.worker_start import StartFailed, import_task_code, ready_event
from dispatcher.server.worker_tracebacks import NOT_RETRIED, capped, does_not_fit, traceback_of

logger = get_logger("dispatcher.worker")

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
            hooks = import_task_code(options.modules, options.hooks_class, options.worker_id)
    except StartFailed as failed:  # said as the start-up checks say it: no traceback
        capture.close()
        error = str(failed.report.get("error"))
        channel.send(event_line({"event": "fatal", "error": error, "report": failed.report}))
        return
    except BaseException:
        capture.close()
        channel.send(
            event_line({"event": "fatal", "error": capped(traceback.format_exc(), whole=True)})
        )
        return
    runner = TaskRunner(options.worker_id, channel, hooks, capture)
    runner.signals.install()
    os.register_at_fork(after_in_child=note_fork)
    call_hook(hooks.on_start)
    runner.signals.keep("on_start")  # its alarm cancelled, the handlers it set kept
    adopt_dispatcherd_tasks()  # after every import: the task modules, the hooks, on_start
    capture.keep_streams()  # as the hooks and the imports left them: what tasks get back
    channel.send(event_line(ready_event()))
    try:
        while True:
            try:
                line = channel.read(timeout=options.idle_timeout)
            except TimeoutError:
                call_hook(hooks.on_idle)
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
        call_hook(hooks.on_shutdown)
        capture.close()


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
            if in_event_loop_code(frame):
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
        call_hook(self._hooks.pre_task, message)
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
            if does_not_fit(exc):
                error += f" ({NOT_RETRIED})"
                done["final"] = True
            elif isinstance(exc, NotRegisteredHere) and registry.get(message["task"]) is None:
                done["unregistered"] = True  # never ran: counted as refused, not by its name
            done.update(
                outcome="error",
                error=capped(error),
                traceback=capped(traceback_of(exc), whole=True),
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
        call_hook(self._hooks.post_task, done)
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
                Block(traceback_of(exc)),
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
            if FORKED[0] or os.getpid() != self._pid:  # (a fork that os.fork() did not make)
                exit_forked("task %s (uuid %s)", message["task"], message.get("uuid"))
            self._running = False
            self._async_task, self._cancel_due = None, False
            if runner is not None:
                self._after_async_task(runner, message)
        refuse_generator(result)
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


def _nothing() -> None:
    """A callback that does nothing: scheduled to wake an event loop up."""


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _has_follow_ups(message: Mapping[str, Any]) -> bool:
    return bool(message.get("callbacks") or message.get("errbacks"))

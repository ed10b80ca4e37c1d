"""Running the task messages a worker is sent, one at a time: :class:`TaskRunner`.

Plain function tasks run directly, ``async def`` tasks on an event loop kept from one to
the next (:mod:`dispatcher.server.worker_loop_keeper`). The runner keeps count of the run
requests, so that the signals of the service (a cancel, which names its request; a recall)
reach the one they mean, whether it runs or waits; it reports each request's end as a
``done`` event, with its outcome, its result or its error.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import gc
import inspect
import os
import signal
import time
from collections.abc import Mapping
from types import FrameType
from typing import Any

from dispatcher.publish import DispatcherCancel, registry
from dispatcher.server.capture import OutputCapture
from dispatcher.server.dispatcherd_tasks import conventions, is_adopted
from dispatcher.server.hooks import BaseWorker
from dispatcher.server.log_text import describe_exception
from dispatcher.server.protocol import (
    CANCEL_SIGNALS,
    RECALL_SIGNAL,
    BlockingLineSocket,
    cancel_target,
)
from dispatcher.server.results import encode_result
from dispatcher.server.worker_bound import BoundTask
from dispatcher.server.worker_cancel import Canceller, CancelTranslator, awaited
from dispatcher.server.worker_follow_ups import FollowUps, has_follow_ups
from dispatcher.server.worker_forks import FORKED, call_hook, exit_forked
from dispatcher.server.worker_loop import put_back_thread_loop
from dispatcher.server.worker_loop_keeper import LoopKeeper
from dispatcher.server.worker_places import PlaceKeeper
from dispatcher.server.worker_refusals import NotRegisteredHere, refuse_generator
from dispatcher.server.worker_signals import Handler, SignalKeeper
from dispatcher.server.worker_tracebacks import NOT_RETRIED, capped, does_not_fit, traceback_of


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
        self._loops = LoopKeeper()
        """The event loop of ``async def`` tasks, made at the first one."""
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
        self._canceller = Canceller(self._loops)
        """Raises a cancel in the task running, plain or ``async def``."""
        self._follow_ups = FollowUps(self._call, self._conventions)
        """Runs the errbacks and callbacks of a message after its task."""
        handlers: dict[int, Handler] = {signal.SIGUSR1: self.on_cancel_signal}
        handlers.update(dict.fromkeys(CANCEL_SIGNALS, self.on_cancel_request))
        handlers[RECALL_SIGNAL] = self.on_recall_signal
        self._pid = os.getpid()
        handlers[signal.SIGTERM] = functools.partial(_stopped, capture, self._pid)
        self.signals = SignalKeeper(handlers)
        """The worker's handlers of the signals it reserves, put back after each task."""
        self.places = PlaceKeeper()
        """The working directory and the umask, put back after each task."""

    def on_cancel_signal(self, signum: int, frame: FrameType | None) -> None:
        """SIGUSR1: cancel the running task (ignored between tasks)."""
        if self._running:
            self._canceller.cancel_running(frame)

    def on_cancel_request(self, signum: int, frame: FrameType | None) -> None:
        """One of :data:`CANCEL_SIGNALS`: cancel the request it names, now or before it starts."""
        target = cancel_target(signum, self._started)
        if target is None or (target == self._started and self._ended):
            return  # that request has already ended
        if target == self._started and self._running:
            self._canceller.cancel_running(frame)
        self._cancelled.add(target)

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
        if done["outcome"] in ("ok", "error") and has_follow_ups(message):
            self._follow_ups.run(message, done)
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
        self.places.check(message.get("task"), done["uuid"])
        self._capture.end()  # its output, logged with its name and uuid
        taken = self._capture.fds_taken()
        if taken is not None:  # (it could not be told in the log, which may be gone)
            self.retire()
            done["retire"] = taken
        return done

    def retire(self) -> None:
        """Run no more requests: this worker can no longer be trusted.

        Those it holds, and those sent before the service reads why, end unstarted
        (``recalled``): the service gives them back, and replaces the worker.
        """
        if self._recalled_after is None:
            self._recalled_after = self._started

    def _call(self, message: Mapping[str, Any]) -> Any:
        entry = registry.get(message["task"])
        if entry is None:  # the service checks names first; a worker re-checks
            raise NotRegisteredHere(
                f"task {message['task']!r} is not registered in this worker"
                " (its code no longer registers it: renamed or removed since it was sent?)"
            )
        if self._conventions.cancel is not DispatcherCancel:  # dispatcherd is loaded
            adopted = is_adopted(entry.name)
            self._canceller.cancel = self._conventions.cancel if adopted else DispatcherCancel
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
                runner = self._loops.get()
                result = runner.run(awaited(CancelTranslator(result, self._canceller)), context)
        finally:
            if FORKED[0] or os.getpid() != self._pid:  # (a fork that os.fork() did not make)
                exit_forked("task %s (uuid %s)", message["task"], message.get("uuid"))
            self._running = False
            self._canceller.task_ended()
            if runner is not None:
                self._loops.after_task(runner, message)
        refuse_generator(result)
        return result

    def close(self) -> None:
        """Release the event loop of ``async def`` tasks, if one was made.

        The async generators tasks kept open are closed (each gets its ``finally`` run, for
        up to :data:`~dispatcher.server.worker_loop_keeper.LEFTOVER_GRACE` seconds in all);
        threads of its executor still running are not waited for.
        """
        self._loops.close()

"""What runs inside a worker subprocess: import the task modules, then run tasks on request.

The service starts workers through its fork server (:mod:`dispatcher.server.forkserver`),
which has already imported the task modules, so a new worker is ready in milliseconds. A
worker reads requests from its socket, runs the registered task named by each, and reports
the outcome. Task code runs only here, never in the service's main process.

Tasks registered with dispatcherd's ``@task`` count as registered too, when the task modules
use dispatcherd (see :mod:`dispatcher.server.dispatcherd_tasks`). A message's ``callbacks``
and ``errbacks`` (task messages too) run after its task, in the same worker and the same job,
as dispatcherd runs them (see :meth:`~dispatcher.server.worker_runner.TaskRunner.run`).
"""

from __future__ import annotations

import os
import signal
import socket
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dispatcher.schema import LogFormat
from dispatcher.server.capture import OutputCapture
from dispatcher.server.dispatcherd_tasks import adopt_dispatcherd_tasks
from dispatcher.server.log_records import get_logger
from dispatcher.server.log_setup import as_formatter, log_to, root_left_to_the_app, set_apart
from dispatcher.server.logformat import worker_formatter
from dispatcher.server.protocol import BlockingLineSocket, event_line, read_line
from dispatcher.server.worker_forks import call_hook, note_fork
from dispatcher.server.worker_runner import TaskRunner
from dispatcher.server.worker_start import StartFailed, import_task_code, ready_event
from dispatcher.server.worker_tracebacks import capped

logger = get_logger("dispatcher.worker")


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


class LinesDropped:
    """Reports to the service the log lines this worker dropped, with its tasks' ends."""

    def __init__(self, capture: OutputCapture) -> None:
        self._capture = capture
        self._reported = 0

    def report(self, done: dict[str, Any]) -> None:
        """Add to the ``done`` event *done* the lines dropped since the last report, if any.

        Lines dropped after a worker's last task are said in its log only.
        """
        dropped = self._capture.lines_dropped()
        if dropped != self._reported:  # (seldom: the check costs a few hundred nanoseconds)
            done["log_lines_dropped"] = dropped - self._reported
            self._reported = dropped


def worker_main(sock: socket.socket, options: WorkerOptions) -> None:
    """Entry point of a worker process (called in the child the fork server forked)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the service's to handle
    capture = OutputCapture(options.max_output_bytes)
    log_format = worker_formatter(options.log_format, options.worker_id)
    stream = capture.start(as_formatter(log_format))  # (the app's handlers to fds 1 and 2
    # now write past it, and none of its lines waits for the log's reader)
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
    runner.places.keep()  # the working directory and umask it chose, if it did
    adopt_dispatcherd_tasks()  # after every import: the task modules, the hooks, on_start
    capture.keep_streams()  # as the hooks and the imports left them: what tasks get back
    channel.send(event_line(ready_event()))
    dropped = LinesDropped(capture)
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
                dropped.report(done)
                channel.send(event_line(done))
                capture.log_ended()  # (the task's output: its end is reported already)
                if done["outcome"] == "exit":
                    break
    finally:
        runner.close()
        call_hook(hooks.on_shutdown)
        capture.close()

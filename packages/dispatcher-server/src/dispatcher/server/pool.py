"""The pool of worker processes: a FIFO queue of jobs, and workers that run them.

Jobs go to the longest-idle worker, or wait in the queue while every worker is busy. The
pool grows one worker per step while there is a backlog (up to ``max_workers``), shrinks
after ``scaledown_wait`` idle seconds (down to ``min_workers``), replaces workers after
``max_worker_lifetime`` seconds or ``max_tasks_per_worker`` tasks (between tasks), and
replaces a worker that dies at once, recording its task as ``worker_lost``.

Before the queue, a job may be held for its ``delay`` and pass the ``on_duplicate`` gate.
A running job that times out or is cancelled gets SIGUSR1 (``DispatcherCancel`` in the
task); if it is still running ``cancel_grace`` seconds later, its worker gets SIGTERM, then
SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import os
import select
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import anyio
from anyio.abc import TaskGroup, TaskStatus

from dispatcher.config import Service as ServiceSettings
from dispatcher.server.delayer import Delayer
from dispatcher.server.gate import Admission, DuplicateGate
from dispatcher.server.launcher import LaunchError, WorkerLauncher, WorkerProcess
from dispatcher.server.logsafe import Block, get_logger
from dispatcher.server.protocol import STOP_LINE, LineReader, reply_line
from dispatcher.server.ratelimit import InternalErrorLog, RateLimitedLog
from dispatcher.server.stats import ServiceStats
from dispatcher.server.timers import Timers

logger = get_logger("dispatcher.pool")

STARTUP_TIMEOUT = 60.0
"""Seconds a new worker has to import the task modules and report ready."""

_READ_SIZE = 1 << 16

EXIT_WAIT = 5.0
"""Seconds a worker asked to stop (or seen to die) has to exit before it is killed."""

MEMORY_CHECK_INTERVAL = 0.1
"""Seconds between two looks at the workers' memory, when ``worker.max_memory`` is set."""

KILL_AFTER_TERM = 0.5
"""Seconds between SIGTERM and SIGKILL when a cancelled task will not stop."""

ControlHandler = Callable[[str, dict[str, Any]], dict[str, Any]]


class WorkerStatus(enum.Enum):
    """Where a worker is in its life."""

    STARTING = "starting"
    READY = "ready"
    BUSY = "busy"
    STOPPING = "stopping"
    EXITED = "exited"


_LIVE = frozenset({WorkerStatus.STARTING, WorkerStatus.READY, WorkerStatus.BUSY})
"""Statuses of workers that count towards the pool's size."""


class Job(NamedTuple):
    """A validated task message waiting for, or running on, a worker.

    A tuple of strings and bytes, so that a long queue of them costs the garbage collector
    nothing (it stops tracking such tuples).
    """

    uuid: str
    task: str
    line: bytes
    """The request line for a worker (the message's JSON text, as received)."""
    timeout: float = 0
    """Seconds the task may run (``0``: no limit)."""
    delay: float = 0
    """Seconds to hold the job before it is dispatched."""
    on_duplicate: str | None = None
    key: str | None = None
    published: float = 0
    """``time_pub`` of the message (publisher's clock), ``0`` when unknown."""
    """Identity for ``on_duplicate`` (task, args, kwargs); ``None`` when not tracked."""

    def matches(self, uuid: str | None, task: str | None) -> bool:
        """Tell whether the job has this uuid and task name (``None`` matches any)."""
        return (uuid is None or self.uuid == uuid) and (task is None or self.task == task)


@dataclass(eq=False)
class Worker:
    """The service's view of one worker process."""

    id: int
    created: float = field(default_factory=time.monotonic)
    status: WorkerStatus = WorkerStatus.STARTING
    process: WorkerProcess | None = None
    fd: int = -1
    """The socket's file descriptor (read and written with os calls: cheaper)."""
    reader: LineReader = field(default_factory=LineReader)
    pid: int | None = None
    job: Job | None = None
    tasks_done: int = 0
    idle_since: float = 0.0
    outbox: bytearray = field(default_factory=bytearray)
    cancelling: str | None = None
    """Why the running task is being cancelled (``timeout`` or ``cancelled``), if it is."""
    killed_for: str | None = None
    """The outcome its task gets because the service killed the worker: ``killed`` (the task
    ignored its cancel) or ``memory_exceeded``."""
    started: anyio.Event = field(default_factory=anyio.Event)
    """Set when the worker has reported ready (or failed to import the task modules)."""
    gone: anyio.Event = field(default_factory=anyio.Event)
    """Set when the worker's process has ended (or its socket closed)."""


class WorkerPool:
    """Runs jobs on worker processes; see the module docstring for the rules."""

    def __init__(
        self,
        settings: ServiceSettings,
        launcher: WorkerLauncher,
        stats: ServiceStats,
        on_ready: Callable[[frozenset[str]], None],
        on_fatal: Callable[[str], None],
        on_control: ControlHandler,
        max_memory: int | None = None,
    ) -> None:
        self.settings = settings.pool
        self.limits = settings.limits
        self._max_memory = max_memory
        self.cancel_grace = settings.cancel_grace
        self.min_workers = self.settings.min_workers
        self.max_workers = self.settings.max_workers or os.cpu_count() or 1
        self._launcher = launcher
        self._stats = stats
        self._on_ready = on_ready
        self._on_fatal = on_fatal
        self._on_control = on_control
        self.timers = Timers()
        self._gate = DuplicateGate()
        self._delayer = Delayer(self.timers, self._admit)
        self._timeout_log = RateLimitedLog(logger, logging.WARNING)
        self._refusals = RateLimitedLog(logger, logging.WARNING)
        self._held_bytes = 0
        """Bytes of the messages of jobs submitted and not yet running (nor dropped)."""
        self._internal_errors = InternalErrorLog(logger)
        self._workers: dict[int, Worker] = {}
        self._idle: deque[Worker] = deque()
        self._queue: deque[Job] = deque()
        self._next_id = 0
        self._task_names: frozenset[str] | None = None
        self._closing = False
        self._wakeup = anyio.Event()
        """Set to make the manager look at the pool now rather than at its next tick."""
        self._changed: anyio.Event | None = None
        """Set when a worker finishes a task or goes away, while someone waits for that."""
        self._task_group: TaskGroup | None = None

    # -- running -------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Start ``min_workers`` workers, then keep the pool in shape until cancelled."""
        async with anyio.create_task_group() as task_group:
            self._task_group = task_group
            self._launcher.start()
            task_group.start_soon(self.timers.run, name="timers")
            if self._max_memory is not None:
                task_group.start_soon(self._watch_memory, self._max_memory, name="memory-watch")
            for _ in range(self.min_workers):
                self._start_worker()
            task_status.started()
            while True:
                with anyio.move_on_after(1.0):
                    await self._wakeup.wait()
                self._wakeup = anyio.Event()
                if not self._closing:
                    self._manage(time.monotonic())

    def submit(self, job: Job) -> bool:
        """Take a job: hold it for its delay, pass it through the duplicate gate, run it.

        Returns ``False`` when the job is refused because a limit of ``service.limits`` is
        reached (counted and logged here).
        """
        limits, size = self.limits, len(job.line)
        if self._held_bytes + size > limits.max_held_bytes:
            return self._refuse(job, "max_held_bytes", limits.max_held_bytes)
        if job.delay > 0:
            if self._delayer.count >= limits.max_delayed:
                return self._refuse(job, "max_delayed", limits.max_delayed)
            self._held_bytes += size
            self._delayer.hold(job, job.delay)
            return True
        if not self._idle and len(self._queue) >= limits.max_queued:
            return self._refuse(job, "max_queued", limits.max_queued)
        self._held_bytes += len(job.line)
        self._admit(job)
        return True

    def _refuse(self, job: Job, limit: str, value: int) -> bool:
        self._stats.rejected["overloaded"] += 1
        self._refusals.log(
            "task %s (uuid %s) refused: service.limits.%s (%d) reached",
            job.task,
            job.uuid,
            limit,
            value,
        )
        return False

    def _admit(self, job: Job) -> None:
        if self._closing:
            self._unhold(job)
            return
        admission = self._gate.admit(job, self.limits.max_blocked)
        if admission is Admission.RUN:
            self._dispatch(job)
        elif admission is Admission.DISCARD:
            self._unhold(job)
            self._stats.discarded += 1
            logger.debug("task %s (uuid %s) discarded: a duplicate is active", job.task, job.uuid)
        elif admission is Admission.REFUSE:
            self._unhold(job)
            self._refuse(job, "max_blocked", self.limits.max_blocked)

    def _unhold(self, job: Job) -> None:
        self._held_bytes -= len(job.line)

    def _dispatch(self, job: Job) -> None:
        """Run *job* on the longest-idle worker, or queue it (FIFO) if all are busy."""
        while self._idle:
            worker = self._idle.popleft()
            if worker.status is WorkerStatus.READY:
                self._assign(worker, job)
                return
        self._queue.append(job)
        if len(self._queue) == 1:
            self._wakeup.set()  # a backlog starts: the manager may add a worker

    @property
    def queued(self) -> int:
        """Jobs waiting for a worker."""
        return len(self._queue)

    @property
    def blocked(self) -> int:
        """Jobs held back by ``on_duplicate``."""
        return self._gate.blocked_count

    @property
    def delayed(self) -> int:
        """Jobs held for their ``delay``."""
        return self._delayer.count

    @property
    def held_bytes(self) -> int:
        """Bytes of the messages held (queued, delayed or blocked)."""
        return self._held_bytes

    @property
    def workers(self) -> list[Worker]:
        """Every worker the pool has (starting, ready, busy or stopping)."""
        return list(self._workers.values())

    def _manage(self, now: float) -> None:
        live = [w for w in self._workers.values() if w.status in _LIVE]
        for worker in live:
            if worker.status is WorkerStatus.READY and self._past_lifetime(worker, now):
                logger.info("worker %d reached its maximum lifetime: replacing it", worker.id)
                self._stop(worker)
        live = [w for w in live if w.status in _LIVE]
        starting = sum(1 for w in live if w.status is WorkerStatus.STARTING)
        if len(live) < self.min_workers:
            for _ in range(self.min_workers - len(live)):
                self._start_worker()
        elif self._queue and len(live) < self.max_workers and not starting:
            self._start_worker()  # one per step while the backlog lasts
        elif not self._queue and len(live) > self.min_workers:
            idle = [w for w in self._idle if w.status is WorkerStatus.READY]
            if idle and now - idle[0].idle_since >= self.settings.scaledown_wait:
                logger.debug("worker %d idle: stopping it", idle[0].id)
                self._stop(idle[0])

    # -- workers -------------------------------------------------------------------------

    def _start_worker(self) -> None:
        assert self._task_group is not None
        worker = Worker(self._next_id)
        self._next_id += 1
        self._workers[worker.id] = worker
        self._task_group.start_soon(self._worker_life, worker, name=f"worker-{worker.id}")

    async def _worker_life(self, worker: Worker) -> None:
        try:
            process = await self._launcher.launch(worker.id)
        except (LaunchError, OSError) as exc:
            logger.error("could not start worker %d: %s", worker.id, exc)
            self._forget(worker)
            await anyio.sleep(1.0)  # do not spin if starting workers keeps failing
            self._wakeup.set()
            return
        self._stats.workers_started += 1
        worker.process, worker.pid = process, process.pid
        if worker.status is WorkerStatus.STOPPING:  # stopped while it was being forked
            process.kill()
        loop = asyncio.get_running_loop()
        fd = worker.fd = process.sock.fileno()
        # Reader callbacks rather than tasks awaiting readability: one event per wake-up,
        # with no epoll registration per read and no task switch (this is the hot path).
        loop.add_reader(fd, self._on_readable, worker)
        # The pidfd says at once when the process ends, even if a child it started still
        # holds its socket open (so that no end-of-file comes).
        loop.add_reader(process.pidfd, self._on_process_end, worker)
        try:
            with anyio.move_on_after(STARTUP_TIMEOUT):
                await worker.started.wait()
            if worker.started.is_set():
                await worker.gone.wait()
            else:
                logger.error(
                    "worker %d did not start within %.0f s: killing it", worker.id, STARTUP_TIMEOUT
                )
        finally:
            loop.remove_reader(fd)
            loop.remove_reader(process.pidfd)
            with anyio.CancelScope(shield=True):
                await self._reap(worker)

    def _on_readable(self, worker: Worker) -> None:
        """Read and handle what a worker sent (called by the event loop)."""
        try:
            data = os.read(worker.fd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(worker.fd)
            self._lost(worker)
            return
        self._handle_data(worker, data)

    def _on_process_end(self, worker: Worker) -> None:
        """The worker's process has ended: take what it wrote last, then treat it as gone."""
        assert worker.process is not None
        asyncio.get_running_loop().remove_reader(worker.process.pidfd)
        while worker.status is not WorkerStatus.EXITED:
            try:
                data = os.read(worker.fd, _READ_SIZE)
            except BlockingIOError:
                break
            except OSError:
                break
            if not data:
                break
            self._handle_data(worker, data)
        if worker.status is not WorkerStatus.EXITED:
            asyncio.get_running_loop().remove_reader(worker.fd)
            self._lost(worker)

    def _handle_data(self, worker: Worker, data: bytes) -> None:
        for line in worker.reader.feed(data):
            try:
                self._handle_event(worker, json.loads(line))
            except Exception as exc:  # costs this event, never the worker or the service
                self._stats.rejected["internal_error"] += 1
                self._internal_errors.report("a worker event", exc, f"worker {worker.id}")

    def _handle_event(self, worker: Worker, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "done":
            self._finished(worker, event)
        elif kind == "ready":
            if self._task_names is None:
                self._task_names = frozenset(event["tasks"])
                self._on_ready(self._task_names)
            logger.debug("worker %d (pid %d) ready", worker.id, worker.pid)
            worker.started.set()
            if worker.status is WorkerStatus.STARTING:
                self._available(worker)
            self._wakeup.set()
        elif kind == "control":
            reply = self._on_control(event["command"], event.get("data") or {})
            self._send(worker, reply_line(reply))
        elif kind == "fatal":
            worker.status = WorkerStatus.STOPPING
            worker.started.set()
            self._on_fatal(event["error"])

    def _finished(self, worker: Worker, event: dict[str, Any]) -> None:
        job, worker.job = worker.job, None
        worker.tasks_done += 1
        outcome = event.get("outcome")
        if outcome == "cancelled":
            outcome = worker.cancelling or "cancelled"
        elif outcome == "exit":
            outcome = "ok"
            worker.status = WorkerStatus.STOPPING  # it exits now; the manager replaces it
        worker.cancelling, worker.killed_for = None, None
        # The pool's own state first: nothing below may leave a duplicate blocked or a
        # worker busy forever.
        if job is not None:
            self._release(job)
        self._after_task(worker)
        self._signal_change()
        if job is not None:
            self._record(worker, job, str(outcome), event)

    def _record(self, worker: Worker, job: Job, outcome: str, event: dict[str, Any]) -> None:
        """Account for a finished task and log it."""
        self._stats.task_ended(job.task, outcome)
        started, finished = float(event["started"]), float(event["finished"])
        self._stats.timings(job.task, job.published, started, finished)
        if outcome == "error":
            logger.error(
                "task %s (uuid %s) failed: %s%s",
                job.task,
                job.uuid,
                event.get("error"),
                Block(str(event.get("traceback", ""))),
            )
        elif logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "task %s (uuid %s) finished %s in %.1f ms on worker %d",
                job.task,
                job.uuid,
                outcome,
                (finished - started) * 1000,
                worker.id,
            )

    def _after_task(self, worker: Worker) -> None:
        """A worker's task has ended: give it the next job, or stop or replace it."""
        limit = self.settings.max_tasks_per_worker
        if worker.status is WorkerStatus.STOPPING:
            self._wakeup.set()
        elif self._closing:
            self._stop(worker)
        elif limit is not None and worker.tasks_done >= limit:
            logger.debug("worker %d ran %d tasks: replacing it", worker.id, worker.tasks_done)
            self._stop(worker)
        elif self._past_lifetime(worker, time.monotonic()):
            logger.info("worker %d reached its maximum lifetime: replacing it", worker.id)
            self._stop(worker)
        else:
            self._available(worker)

    def _past_lifetime(self, worker: Worker, now: float) -> bool:
        lifetime = self.settings.max_worker_lifetime
        return lifetime is not None and now - worker.created >= lifetime

    def _available(self, worker: Worker) -> None:
        if self._queue and not self._closing:
            self._assign(worker, self._queue.popleft())
        else:
            worker.status = WorkerStatus.READY
            worker.idle_since = time.monotonic()
            self._idle.append(worker)

    def _assign(self, worker: Worker, job: Job) -> None:
        self._unhold(job)
        worker.status = WorkerStatus.BUSY
        worker.job = job
        self._send(worker, job.line)
        if job.timeout > 0:
            self.timers.call_later(job.timeout, self._timed_out, worker, job)

    def _release(self, job: Job) -> None:
        """*job* has ended: let a blocked duplicate of it run."""
        if job.key is not None:
            released = self._gate.finished(job)
            if released is not None:
                self._admit(released)

    # -- cancelling ----------------------------------------------------------------------

    def _timed_out(self, worker: Worker, job: Job) -> None:
        if worker.job is job:
            self._timeout_log.log(
                "task %s (uuid %s) exceeded its timeout of %g s: cancelling it",
                job.task,
                job.uuid,
                job.timeout,
            )
            self._cancel_running(worker, "timeout")

    def _cancel_running(self, worker: Worker, reason: str) -> None:
        if worker.cancelling is not None or worker.pid is None or worker.job is None:
            return
        worker.cancelling = reason
        if worker.process is not None:
            worker.process.signal(signal.SIGUSR1)
        self.timers.call_later(self.cancel_grace, self._escalate, worker, worker.job)

    def _escalate(self, worker: Worker, job: Job) -> None:
        if worker.job is not job or worker.process is None:
            return
        logger.warning(
            "task %s (uuid %s) is still running %g s after its cancel: terminating worker %d",
            job.task,
            job.uuid,
            self.cancel_grace,
            worker.id,
        )
        worker.killed_for = "killed"
        worker.status = WorkerStatus.STOPPING
        worker.process.terminate()
        self.timers.call_later(KILL_AFTER_TERM, self._kill, worker, job)

    def _kill(self, worker: Worker, job: Job) -> None:
        if worker.job is job and worker.process is not None:
            worker.process.kill()

    def cancel(self, uuid: str | None = None, task: str | None = None) -> list[dict[str, Any]]:
        """Cancel the tasks with this uuid and/or task name, wherever they are.

        Delayed, blocked and queued copies are removed; running ones are stopped (SIGUSR1,
        then SIGTERM and SIGKILL if they ignore it). Returns what was cancelled.
        """
        if uuid is None and task is None:
            raise ValueError("cancel needs a uuid or a task name")
        return self._cancel(lambda job: job.matches(uuid, task))

    def cancel_all(self) -> list[dict[str, Any]]:
        """Cancel every task: running, queued, blocked and delayed."""
        return self._cancel(lambda job: True)

    def _cancel(self, match: Callable[[Job], bool]) -> list[dict[str, Any]]:
        found = []
        for worker in self._workers.values():
            job = worker.job
            if job is not None and worker.status is WorkerStatus.BUSY and match(job):
                self._cancel_running(worker, "cancelled")
                found.append(_describe(job, f"worker-{worker.id}"))
        removed_queue = [job for job in self._queue if match(job)]
        if removed_queue:
            self._queue = deque(job for job in self._queue if not match(job))
        for where, jobs in (
            ("queued", removed_queue),
            ("blocked", self._gate.remove(match)),
            ("delayed", self._delayer.remove(match)),
        ):
            for job in jobs:
                self._unhold(job)
                self._stats.task_ended(job.task, "cancelled")
                found.append(_describe(job, where))
                if where == "queued":
                    self._release(job)
        return found

    def running(self, uuid: str | None = None, task: str | None = None) -> list[dict[str, Any]]:
        """Describe the jobs running, queued, blocked and delayed (filtered like cancel)."""
        found = [
            _describe(w.job, f"worker-{w.id}")
            for w in self._workers.values()
            if w.job is not None and w.job.matches(uuid, task)
        ]
        for where, jobs in (
            ("queued", list(self._queue)),
            ("blocked", list(self._gate.blocked())),
            ("delayed", self._delayer.held()),
        ):
            found += [_describe(job, where) for job in jobs if job.matches(uuid, task)]
        return found

    def _send(self, worker: Worker, line: bytes) -> None:
        if worker.outbox:
            worker.outbox += line
            return
        try:
            sent = os.write(worker.fd, line)
        except BlockingIOError:
            sent = 0
        except OSError:
            return  # the worker is gone; its reader will see the end of the socket
        if sent < len(line):
            worker.outbox += line[sent:]
            assert self._task_group is not None
            self._task_group.start_soon(self._flush, worker, name=f"worker-{worker.id}-writer")

    async def _flush(self, worker: Worker) -> None:
        assert worker.process is not None
        sock = worker.process.sock
        while worker.outbox:
            await anyio.wait_writable(sock)
            try:
                sent = sock.send(worker.outbox)
            except BlockingIOError:
                continue
            except OSError:
                worker.outbox.clear()
                return
            del worker.outbox[:sent]

    def _stop(self, worker: Worker) -> None:
        """Ask a worker to exit (after its current task, if it has one)."""
        if worker.status in (WorkerStatus.STOPPING, WorkerStatus.EXITED):
            return
        was_starting = worker.status is WorkerStatus.STARTING
        worker.status = WorkerStatus.STOPPING
        if was_starting:
            if worker.process is not None:
                worker.process.kill()
        else:
            self._send(worker, STOP_LINE)
        self._wakeup.set()

    def _lost(self, worker: Worker) -> None:
        """The worker's process ended (or its socket closed): it exited, or died."""
        expected = worker.status is WorkerStatus.STOPPING
        worker.status = WorkerStatus.EXITED
        worker.gone.set()
        job, worker.job = worker.job, None
        if job is not None:
            self._release(job)
        if not expected:
            self._stats.workers_lost += 1
        self._signal_change()
        self._wakeup.set()  # the manager replaces it if needed
        if job is not None:
            outcome = worker.killed_for or "worker_lost"
            self._stats.task_ended(job.task, outcome)
            if outcome == "worker_lost":
                logger.error(
                    "worker %d (pid %s) died while running task %s (uuid %s): worker_lost",
                    worker.id,
                    worker.pid,
                    job.task,
                    job.uuid,
                )
            else:
                logger.warning(
                    "task %s (uuid %s) %s with its worker %d",
                    job.task,
                    job.uuid,
                    "killed" if outcome == "killed" else f"ended as {outcome}",
                    worker.id,
                )
        elif not expected and not self._closing:
            logger.warning("worker %d (pid %s) exited unexpectedly", worker.id, worker.pid)

    async def _watch_memory(self, limit: int) -> None:
        """Kill a worker whose resident memory passes *limit* bytes (``worker.max_memory``)."""
        while True:
            await anyio.sleep(MEMORY_CHECK_INTERVAL)
            for worker in list(self._workers.values()):
                if worker.status not in _LIVE or worker.killed_for is not None:
                    continue
                rss = resident_bytes(worker.pid)
                if rss is None or rss <= limit or worker.process is None:
                    continue
                job = worker.job
                logger.warning(
                    "worker %d (pid %s) uses %d MiB, over worker.max_memory (%d MiB): killing it%s",
                    worker.id,
                    worker.pid,
                    rss >> 20,
                    limit >> 20,
                    "" if job is None else f" and its task {job.task} (uuid {job.uuid})",
                )
                worker.killed_for = "memory_exceeded"
                worker.status = WorkerStatus.STOPPING
                worker.process.kill()

    def worker_exited(self, pid: int, status: int) -> None:
        """The fork server reaped worker *pid* with *status* (negative: killed by a signal)."""
        if status < 0 and not self._closing:
            logger.warning("worker process %d was killed by %s", pid, _signal_name(-status))

    async def _reap(self, worker: Worker) -> None:
        """Wait for the process to end (killing it if it lingers) and forget the worker."""
        if worker.status is not WorkerStatus.EXITED:
            worker.status = WorkerStatus.EXITED
            if worker.process is not None:
                worker.process.kill()
        process = worker.process
        if process is not None:
            with anyio.move_on_after(EXIT_WAIT):
                await anyio.wait_readable(process.pidfd)
            if not _ended(process):
                logger.warning("worker %d (pid %s) did not exit: killing it", worker.id, worker.pid)
                process.kill()
                await anyio.wait_readable(process.pidfd)
            process.close()
        self._forget(worker)

    def _forget(self, worker: Worker) -> None:
        worker.status = WorkerStatus.EXITED
        self._workers.pop(worker.id, None)
        with contextlib.suppress(ValueError):
            self._idle.remove(worker)
        self._signal_change()

    # -- shutting down -------------------------------------------------------------------

    async def shutdown(self, grace: float) -> None:
        """Stop every worker: idle ones at once, busy ones after their task or *grace* s."""
        self._closing = True
        for where, jobs in (
            ("queued", list(self._queue)),
            ("blocked", list(self._gate.blocked())),
            ("delayed", self._delayer.held()),
        ):
            if jobs:
                uuids = [job.uuid for job in jobs]
                logger.warning(
                    "shutting down with %d %s tasks abandoned: %s",
                    len(uuids),
                    where,
                    _summarise(uuids),
                )
        self._queue.clear()
        self._held_bytes = 0
        for worker in list(self._workers.values()):
            if worker.status is not WorkerStatus.BUSY:
                self._stop(worker)
        busy = [w for w in self._workers.values() if w.status is WorkerStatus.BUSY]
        if busy:
            logger.info("waiting up to %.0f s for %d running tasks to finish", grace, len(busy))
        with anyio.move_on_after(grace):
            await self._wait_until(
                lambda: not any(w.status is WorkerStatus.BUSY for w in self._workers.values())
            )
        for worker in list(self._workers.values()):
            if worker.status is WorkerStatus.BUSY and worker.job is not None:
                logger.warning(
                    "task %s (uuid %s) still running after %.0f s: stopping worker %d",
                    worker.job.task,
                    worker.job.uuid,
                    grace,
                    worker.id,
                )
                self._stats.task_ended(worker.job.task, "killed")
                worker.job = None
                worker.status = WorkerStatus.STOPPING
                if worker.process is not None:
                    worker.process.terminate()
        with anyio.move_on_after(EXIT_WAIT * 2):
            await self._wait_until(lambda: not self._workers)
        for worker in list(self._workers.values()):
            if worker.process is not None:
                worker.process.kill()
        with anyio.move_on_after(EXIT_WAIT):
            await self._wait_until(lambda: not self._workers)

    def _signal_change(self) -> None:
        if self._changed is not None:  # only shutdown waits for it: keep the hot path cheap
            self._changed.set()
            self._changed = None

    async def _wait_until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()

    def kill_all(self) -> None:
        """Kill every worker process now (for a forced exit)."""
        for worker in self._workers.values():
            if worker.process is not None:
                worker.process.kill()
        self._launcher.close()


def _describe(job: Job, where: str) -> dict[str, Any]:
    message = json.loads(job.line)["message"]
    return {"where": where, "uuid": job.uuid, "task": job.task, "message": message}


def _summarise(uuids: list[str], shown: int = 20) -> str:
    text = ", ".join(uuids[:shown])
    return text + (f" and {len(uuids) - shown} more" if len(uuids) > shown else "")


def resident_bytes(pid: int | None) -> int | None:
    """The resident memory of process *pid* in bytes, or ``None`` if it cannot be read."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            resident_pages = int(statm.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return resident_pages * _PAGE_SIZE


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _ended(process: WorkerProcess) -> bool:
    readable, _, _ = select.select([process.pidfd], [], [], 0)
    return bool(readable)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"

"""The service: one anyio task group running the brokers, the intake and the worker pool."""

from __future__ import annotations

import asyncio
import errno
import functools
import gc
import logging
import math
import os
import signal
import threading
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, Final

import anyio
from anyio.abc import TaskGroup

from dispatcher.config import Settings
from dispatcher.schema import DispatcherError, Outcome
from dispatcher.schema.log_fields import EVENT, NODE
from dispatcher.server.allowlist import ControlAllowList
from dispatcher.server.brokers.base import BrokerContext, Leasing, StartRefused
from dispatcher.server.brokers.capacity import CapacityGauge
from dispatcher.server.brokers.pg_queue.sampler import QueueSampler
from dispatcher.server.brokers.registry import create_brokers
from dispatcher.server.brokers.replies import ReplyRouter
from dispatcher.server.brokers.runner import run_broker
from dispatcher.server.catalogue import TaskCatalogue
from dispatcher.server.control import WALKING_COMMANDS, ControlCommands
from dispatcher.server.control_messages import ControlMessages
from dispatcher.server.forkserver import ForkedServer, worker_options
from dispatcher.server.heap import release_free_memory
from dispatcher.server.intake import Intake
from dispatcher.server.launcher import WorkerLauncher
from dispatcher.server.library_logs import quiet_own_cancellations
from dispatcher.server.log_arguments import Block
from dispatcher.server.log_handler import flush_logs, logs_written_in_background
from dispatcher.server.log_records import get_logger
from dispatcher.server.log_text import first_line
from dispatcher.server.metrics import MetricsServer
from dispatcher.server.node_ids import node_id
from dispatcher.server.origin import Origin
from dispatcher.server.orphans import Orphans
from dispatcher.server.producers import DurableRoutes, run_schedule, start_on_start_tasks
from dispatcher.server.ratelimit import InternalErrorLog, flush_suppressed
from dispatcher.server.rejection import Rejected
from dispatcher.server.release import DISTRIBUTION, installed_version
from dispatcher.server.resources import PROCESS_LIMIT, fds_needed, raise_fd_limit, shortage_text
from dispatcher.server.scheduler import Scheduler
from dispatcher.server.service_signals import receiving_stop_signals
from dispatcher.server.settlement import ABANDONED, REJECTED, Settlements
from dispatcher.server.signatures import SignatureCheck
from dispatcher.server.stats import ServiceStats
from dispatcher.server.supervisor import Supervisor
from dispatcher.server.task_imports import missing_modules, refusal, unregistered_producers
from dispatcher.server.timers import Timers
from dispatcher.server.timetables import ScheduleBoard
from dispatcher.server.view import ServiceView

logger = get_logger("dispatcher.service")

EXIT_OK: Final = 0
EXIT_FORCED: Final = 1
EXIT_CONFIG: Final = 2
"""Exit status when the config cannot serve: here, when ``tasks.modules`` is empty."""
EXIT_TASK_MODULES: Final = 3
"""Exit status when the task modules cannot be imported, or register no task."""
SETTLE_WAIT: Final = 10.0
"""Seconds a stop waits for each durable broker to take the last outcomes (a broker whose
database does not answer gives up sooner, and says what it could not write)."""
MAX_CONTROL_IN_FLIGHT: Final = 64
"""Control messages that look at every task held (``running``, ``cancel``, ``status``: one at
a time, each a while over a long backlog) waiting or being answered, at most; one more is
refused (``overloaded``) with an error reply, so that a flood of them cannot pile up. Other
commands answer at once, however many arrive together."""
CONTROL_WAIT: Final = 2.0
"""Seconds a stop waits (``service.shutdown_grace`` if less), once the workers have stopped,
for the control commands still being answered; those not answered by then are cut short (a
stored one is handed back to its queue, to run again). A ``cancel`` that has taken its jobs
always ends: it settles them."""
NOT_ANSWERED: Final = "the service stopped before it could answer"
"""The error replied to a control message cut short by the stop (and why a stored one is
handed back)."""


class CannotRunHere(DispatcherError, RuntimeError):
    """A service cannot run where it was asked to; nothing was started.

    It needs the main thread (it handles the stop signals) and an asyncio event loop:
    :func:`run_service` runs one of its own, so it cannot be called inside a running one
    (there, ``await Service(settings).run()``).
    """


_IDS_TAKEN: set[str] = set()
"""The node ids this process's services took (not from their config), while they last."""


def _take_node_id(settings: Settings) -> tuple[str, bool]:
    """The node id of a new service of this process, and whether it is held by it.

    Without ``service.node_id``, the id (``$DISPATCHER_NODE_ID``, else the default) is the
    first, numbered after the first service's, that no other service of this process
    holds; it is now held.
    """
    if settings.service.node_id:
        return settings.service.node_id, False
    instance = 1
    while (taken := node_id(settings, instance=instance)) in _IDS_TAKEN:
        instance += 1
    _IDS_TAKEN.add(taken)
    return taken, True


class Service:
    """A dispatcher service built from a config; :meth:`run` it in an asyncio event loop.

    asyncio's only (under trio, :meth:`run` raises :class:`CannotRunHere`), in the main
    thread. Several services may run in one loop: each stop signal stops them all, and
    each takes a node id of its own when the config sets none (the first one's is
    ``$DISPATCHER_NODE_ID``, else ``<host>-<pid>``, the next ones' end with ``-2``,
    ``-3``...).

    *adopt_orphans* (``dispatcher-standalone`` sets it): this process adopts the orphans of
    its descendants, reaps every child it did not start, and kills those adopted that are
    left as the service stops; not the children it had before (see
    :mod:`dispatcher.server.orphans`). Not for a service run in an application's
    process, whose own children it would reap.
    """

    def __init__(
        self,
        settings: Settings,
        log_level: int = logging.INFO,
        fork_server: ForkedServer | None = None,
        reload: bool = False,
        *,
        freeze: bool = False,
        adopt_orphans: bool = False,
    ) -> None:
        self.settings = settings
        self._reload = reload
        """Whether to restart the workers when a task module changes (see ``reload``)."""
        self._freeze = freeze
        """Whether to freeze (:func:`gc.freeze`) every object once started: for a process
        that is the service's alone, as ``dispatcher-standalone``'s is; an application's
        objects would never be collected again."""
        self._release_node_id: Callable[[], object] | None = None
        """Gives the node id taken back: once the service ended, or is no more."""
        self.node_id, held = _take_node_id(settings)
        if held:
            self._release_node_id = weakref.finalize(self, _IDS_TAKEN.discard, self.node_id)
        self.stats = ServiceStats()
        self.exit_status = EXIT_OK
        # First: a cron schedule without croniter refuses the config before anything starts.
        self.schedules = ScheduleBoard(settings)
        # The fork server: the one forked at start-up if given (see forkserver.fork_server),
        # else started with the pool.
        self._launcher = WorkerLauncher(
            worker_options(settings, log_level), fork_server=fork_server
        )
        self._launcher.on_imported = self._task_modules_imported
        self._orphans = Orphans(self._launcher.pids) if adopt_orphans else None
        """The children this process did not start, when it adopts orphans (see ``orphans``)."""
        self._import_report: dict[str, Any] | None = None
        self._imported = anyio.Event()
        """Set when the first fork server has reported on the task modules (or ended)."""
        # Brokers: the configured built-ins and plug-ins, from the registry; run() starts each.
        catalogue = TaskCatalogue()
        # None until the first worker says which tasks are registered: the intake would hold
        # what a broker pulled meanwhile, and a durable broker would claim its rows without
        # the max_attempts their tasks declare (see brokers.pg_queue.limits).
        self.capacity = CapacityGauge(
            self._free_capacity, taking=lambda: catalogue.names is not None
        )
        """Free capacity, for brokers that pull work: none until the tasks are known. Each
        broker has a view of its own (see :meth:`_free_capacity_for`)."""
        context = BrokerContext(
            self.node_id,
            settings,
            self.stats,
            self.capacity,
            declared_attempts=lambda: catalogue.max_attempts,
        )
        self.brokers = create_brokers(
            context,
            lambda name: self.capacity.view(lambda ahead: self._free_capacity_for(name, ahead)),
        )
        self.replies = ReplyRouter(self.brokers)
        self.settlements = Settlements(self.brokers)
        timers = Timers()
        catalogue.on_known(self._check_producers)
        catalogue.on_known(lambda names: self.capacity.changed())
        self.scheduler = Scheduler(
            settings.service.limits,
            timers,
            self.stats,
            workers=lambda: self.supervisor.workers,
            settle=self.settlements.job,
        )
        self.scheduler.on_free = self.capacity.changed
        leasing = {b.name: b for b in self.brokers if isinstance(b, Leasing)}
        if leasing:
            self.scheduler.held_until = lambda job: (
                leasing[job.broker].held_until(str(job.receipt))
                if job.broker in leasing
                else math.inf
            )
        self.supervisor = Supervisor(
            settings.service,
            self._launcher,
            timers,
            self.scheduler,
            catalogue,
            self.stats,
            on_fatal=self._worker_cannot_start,
            max_memory=settings.worker.max_memory,
            settle=self.settlements.job,
        )
        self.scheduler.on_backlog = self.supervisor.wake
        self._launcher.on_exit = self.supervisor.worker_exited
        self.signatures = SignatureCheck(settings.security)
        self.intake = Intake(
            self.scheduler,
            self.stats,
            settings.service.chunk_expiry,
            on_control=self._control_message,
            limits=settings.service.limits,
            signatures=self.signatures,
            catalogue=catalogue,
            settlements=self.settlements,
        )
        catalogue.on_known(self._start_on_start_tasks)
        self._durable_routes = DurableRoutes(catalogue, self.brokers)
        self.view = ServiceView(
            self.stats, self.scheduler, self.supervisor, self.intake, self.signatures
        )
        commands = ControlCommands(
            self.view, settings, self.stats, next_runs=self.schedules.next_runs
        )
        self._commands = commands
        self.supervisor.on_control = self._worker_control
        allow_list = ControlAllowList(settings.brokers)
        for broker, name in allow_list.unknown(commands.table):
            logger.warning(
                "brokers.%s.allow_control in %s: %r is not a control command",
                broker,
                settings.source,
                name,
            )
        self.control = ControlMessages(commands, allow_list, self.stats, self.node_id)
        metrics = settings.service.metrics
        self.metrics = (
            None if metrics is None else MetricsServer(self.view, metrics.host, metrics.port)
        )
        self.view.metrics_server = self.metrics
        durable = settings.brokers.pg_queue
        if metrics is not None and durable is not None:
            self.view.queue_sampler = QueueSampler(
                durable.conninfo,
                durable.schema,
                durable.queues,
                application_name=f"dispatcher-sampler:{self.node_id}"[:63],
            )
        self._stop = anyio.Event()
        self._tasks: TaskGroup | None = None
        """The service's own tasks (set once it runs): control commands run in them."""
        self._walks_in_flight = 0
        """Control messages that look at every task held being answered (at most
        :data:`MAX_CONTROL_IN_FLIGHT`; all of those being answered: :attr:`_answering`)."""
        self._answering: set[anyio.CancelScope] = set()
        """Where each control command being answered runs (a message's, a bound task's): a
        stop cuts short those that outlast :data:`CONTROL_WAIT`, before its last flush."""
        self._answered: anyio.Event | None = None
        """Set when the last command being answered ends, for a stop waiting for it."""
        self._answering_closed = False
        """The stop no longer waits for control commands: one arriving now is not run."""
        self._internal_errors = InternalErrorLog(logger)
        self._schedules: anyio.CancelScope | None = None
        """Where ``producers.scheduled`` run: cancelled as the service begins to stop."""
        self._started = False
        self._serving = False
        """Everything started (brokers, metrics): ``producers.on_start`` may run."""
        self._on_start_due = False
        """The task names are known: ``producers.on_start`` runs once serving (if ever)."""

    async def run(self) -> int:
        """Serve until SIGTERM, SIGINT or SIGHUP (or :meth:`stop`); return the exit status.

        Refuses to start, before any broker listens, when ``tasks.modules`` is empty
        (:data:`EXIT_CONFIG`), or when the fork server reports that a task module cannot be
        imported, that the modules register no task, or that ``producers.scheduled`` or
        ``producers.on_start`` names a task they do not register (:data:`EXIT_TASK_MODULES`).

        Leaves the process as it found it (a service may run in the application's own
        process): its logging, and its handlers of the stop signals (the Python-level ones
        and the loop's), which the service's replace while it runs. The service's own
        handler of standard error (``dispatcher-standalone``'s, ``rundispatcher``'s) writes
        from a thread while it runs, so that the loop never waits for the log's reader (see
        :mod:`dispatcher.server.log_writer`).

        :raises CannotRunHere: outside the main thread, or where no asyncio loop runs
            (under trio, say).
        """
        try:
            _check_main_thread("Service.run()")
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                raise CannotRunHere(
                    "a dispatcher service runs in an asyncio event loop only, and none runs"
                    " here (under trio, say): run it in an asyncio loop, or with"
                    " run_service() from the main thread of a process of its own"
                ) from None
            with quiet_own_cancellations(), logs_written_in_background():
                return await self._run()
        finally:
            if self._release_node_id is not None:
                self._release_node_id()

    async def _run(self) -> int:
        servers = (self.settings.brokers.socket is not None) + (self.metrics is not None)
        raise_fd_limit(fds_needed(self.supervisor.max_workers, servers))
        missing = missing_modules(self.settings.tasks.modules, self.settings.source)
        if missing is not None:
            logger.critical("cannot start: %s", missing)
            self._launcher.close()
            return EXIT_CONFIG
        try:
            with receiving_stop_signals(self._on_stop_signal):
                async with anyio.create_task_group() as task_group:
                    self._tasks = task_group
                    if self._orphans is not None:
                        await task_group.start(self._orphans.run, name="orphans")
                    if await self._task_modules_ready():
                        await self._serve(task_group)
                    else:
                        self._launcher.close()
                    task_group.cancel_scope.cancel()
        finally:
            if self._orphans is not None:
                self._orphans.kill()  # (the fork servers, stopped by now, are spared)
        if self._started or self._stop.is_set():  # (not after refusing to start)
            logger.info(
                "dispatcher service %s stopped", self.node_id, extra=self._fields("service_stopped")
            )
        return self.exit_status

    async def _task_modules_ready(self) -> bool:
        """Start the fork server and wait for its word on the task modules.

        Returns whether the service may go on: ``False`` (with :attr:`exit_status` set)
        when the modules cannot serve, or when a signal came first.
        """
        try:
            self._launcher.start()
        except OSError as exc:  # EAGAIN: the process limit, which a pause cures not soon
            why = f"{first_line(exc)}: {PROCESS_LIMIT}" if exc.errno == errno.EAGAIN else exc
            logger.critical("cannot start the fork server: %s", why)
            self.exit_status = EXIT_CONFIG
            return False
        async with anyio.create_task_group() as waiting:

            async def until(event: anyio.Event) -> None:
                await event.wait()
                waiting.cancel_scope.cancel()

            waiting.start_soon(until, self._imported)
            waiting.start_soon(until, self._stop)
            waiting.start_soon(_remind_while_importing)
        if self._stop.is_set():
            return False
        problem = refusal(self._import_report, self.settings.tasks.modules, self.settings.source)
        if problem is None:
            producers = self.settings.producers
            problem = unregistered_producers(
                self._import_report,
                {"scheduled": producers.scheduled, "on_start": producers.on_start},
                self.settings.source,
            )
        if problem is None:
            return True
        headline, _, details = problem.partition("\n")
        logger.critical("cannot start: %s%s", headline, Block(details))
        self.exit_status = EXIT_TASK_MODULES
        return False

    def _task_modules_imported(self, report: dict[str, Any] | None) -> None:
        """The fork server's import report (``None``: it ended); only the first one counts."""
        if not self._imported.is_set():
            self._import_report = report
            self._imported.set()

    async def _serve(self, task_group: TaskGroup) -> None:
        """Start the pool, the brokers and the rest in *task_group*; serve until stopped."""
        self._started = True
        # A stop signal ends each start-up step: none that waits (for a thread, say) holds
        # the stop up.
        starting = anyio.CancelScope()
        task_group.start_soon(self._cancel_on_stop, starting, name="start-up-abort")
        try:
            with starting:
                await self._start(task_group)
        except StartRefused as refused:
            logger.critical("cannot start: %s", refused)
            self.exit_status = EXIT_CONFIG
            self._stop.set()
        if self._stop.is_set():
            await self._shut_down()  # what did start stops, as on a stop signal; nothing more
            return
        self._serving = True
        self.view.phase = "serving"
        self._release_on_start_tasks()
        task_group.start_soon(self._expire_chunks, name="chunk-expiry")
        task_group.start_soon(self._flush_suppressed_lines, name="suppressed-lines")
        self._schedules = anyio.CancelScope()
        task_group.start_soon(self._run_schedules, self._schedules, name="schedules")
        release_free_memory()  # what start-up allocated and freed
        await self._stop.wait()
        await self._shut_down()

    async def _start(self, task_group: TaskGroup) -> None:
        """Start the pool, the replies, the brokers, the metrics server, the queue sampler.

        :raises StartRefused: when a broker or the metrics server refuses to start.
        """
        await task_group.start(self.supervisor.run, name="worker-pool")
        if self._reload:
            from dispatcher.server.reload import watch_task_modules  # a development aid

            modules = self.settings.tasks.modules
            task_group.start_soon(watch_task_modules, modules, self.supervisor, name="reload")
        if self._freeze:
            # What exists now lives as long as the service (and its process): keep it out
            # of every future garbage collection.
            gc.freeze()
        logger.info(
            "dispatcher service %s started (pid %d, %d-%d workers, %s %s)",
            self.node_id,
            os.getpid(),
            self.supervisor.min_workers,
            self.supervisor.max_workers,
            DISTRIBUTION,
            installed_version(),
            extra=self._fields("service_started"),
        )
        if not self.brokers:
            logger.warning("no brokers in %s: nothing to listen to", self.settings.source)
        steps: list[tuple[str, Callable[..., Coroutine[Any, Any, None]]]] = [
            ("control-replies", self.replies.run),
            ("settlements", self.settlements.run),
        ]
        for broker in self.brokers:
            running = functools.partial(
                run_broker,
                broker,
                self._deliver,
                on_refused=self._refused,
                stopping=self._stop,
                health=self.stats.broker(broker.name),
            )
            steps.append((f"broker:{broker.name}", running))
        if self.metrics is not None:
            steps.append(("metrics", functools.partial(self.metrics.run, on_refused=self._refused)))
        if self.view.queue_sampler is not None:
            steps.append(("queue-sampler", self.view.queue_sampler.run))
        for name, step in steps:
            await task_group.start(step, name=name)

    async def _cancel_on_stop(self, scope: anyio.CancelScope) -> None:
        """Cancel *scope* once the service begins to stop."""
        await self._stop.wait()
        scope.cancel()

    async def _run_schedules(self, scope: anyio.CancelScope) -> None:
        """Run ``producers.scheduled``, each in a task of its own, until *scope* is cancelled."""
        with scope:
            async with anyio.create_task_group() as task_group:
                for task, entry in self.settings.producers.scheduled.items():
                    task_group.start_soon(
                        run_schedule,
                        self.intake,
                        task,
                        entry,
                        self.schedules,
                        self._durable_routes,
                        name=f"scheduled:{task}",
                    )

    def stop(self) -> None:
        """Begin a graceful shutdown."""
        self._stop.set()

    def _free_capacity(self, ahead: int) -> int:
        """Jobs the service would take now: free worker places less jobs waiting, plus *ahead*.

        Waiting for a worker (queued, or held ahead by a busy one), or for the first worker
        to say which tasks are registered.
        """
        busy = held = 0
        for worker in self.supervisor.workers:
            if worker.job is not None:
                busy += 1
            held += len(worker.ahead)
        waiting = self.scheduler.queued + held + self.intake.waiting
        return self.supervisor.max_workers - busy - waiting + ahead

    def _free_capacity_for(self, broker: str, ahead: int) -> int:
        """Jobs *broker* may have the service take now, letting *ahead* of them wait.

        Free worker places less the jobs of *broker* waiting for a worker (queued in its
        lanes, or held ahead by a busy one), plus *ahead*: the jobs of other sources that
        wait do not count, as the lanes take turns (see ``scheduler``); a durable broker
        claims while a NOTIFY backlog waits. When none of its jobs waits but others' do,
        it may take one at least, even with no *ahead*: a lane needs a job to take its
        turn, and no worker place would ever be free while that backlog lasts.
        """
        busy = held = own_held = 0
        for worker in self.supervisor.workers:
            if worker.job is not None:
                busy += 1
            if worker.ahead:
                held += len(worker.ahead)
                own_held += sum(1 for job in worker.ahead if job.broker == broker)
        queued = self.scheduler.queued_from(broker)
        own = queued + own_held
        free = self.supervisor.max_workers - busy - own + ahead
        if free <= 0 and not own:
            others = self.scheduler.queued - queued + held - own_held + self.intake.waiting
            if others:
                return 1
        return free

    def _deliver(self, payload: str, origin: Origin) -> None:
        """What brokers hand every payload to (see ``brokers.base.Deliver``)."""
        self.intake.receive(payload, origin.channel, origin)

    def _on_stop_signal(self, number: signal.Signals) -> None:
        """A stop signal came: begin to stop; the second time, kill the workers and exit."""
        if not self._stop.is_set():
            logger.info(
                "received %s: shutting down",
                signal.Signals(number).name,
                extra=self._fields("service_stopping"),
            )
            self._stop.set()
        else:
            logger.warning("received %s again: forcing exit now", signal.Signals(number).name)
            self.supervisor.kill_all()
            if self._orphans is not None:
                self._orphans.kill()
            flush_logs()  # (bounded: the reader may be the reason it is stuck)
            os._exit(EXIT_FORCED)

    def _fields(self, event: str) -> dict[str, object]:
        """The attributes of a log record about the service's life: *event*, its node id."""
        return {EVENT: event, NODE: self.node_id}

    async def _shut_down(self) -> None:
        self.view.phase = "stopping"
        flush_suppressed(now=True)  # what the last second held back, before the stop's lines
        if self._schedules is not None:
            self._schedules.cancel()  # no tick runs while the service stops
        self.intake.stop_accepting()
        for broker in self.brokers:
            broker.stop_receiving()
        self._commands.stopping.set()
        await self.supervisor.shutdown(self.settings.service.shutdown_grace)
        self._launcher.close()
        self.intake.close()
        await self._end_control_answers()
        await self.settlements.flush(SETTLE_WAIT)
        pending = len(self.intake.chunks)
        if pending:
            logger.warning("dropped %d incomplete chunked messages", pending)

    async def _end_control_answers(self) -> None:
        """Let the control commands being answered end, then cut short those still going.

        They get up to :data:`CONTROL_WAIT` s; those cut short settle what they hold on
        their way out (before the stop's last flush).
        """
        with anyio.move_on_after(min(CONTROL_WAIT, self.settings.service.shutdown_grace)):
            await self._no_answers()
        self._answering_closed = True
        for scope in self._answering:
            scope.cancel()
        with anyio.move_on_after(CONTROL_WAIT):  # (each ends at its next await)
            await self._no_answers()

    async def _no_answers(self) -> None:
        while self._answering:
            self._answered = anyio.Event()
            await self._answered.wait()

    def _answer_begun(self) -> anyio.CancelScope:
        """Where a control command about to be answered runs (see :attr:`_answering`)."""
        scope = anyio.CancelScope()
        self._answering.add(scope)
        return scope

    def _answer_ended(self, scope: anyio.CancelScope) -> None:
        self._answering.discard(scope)
        if not self._answering and self._answered is not None:
            self._answered.set()

    async def _flush_suppressed_lines(self) -> None:
        while True:
            await anyio.sleep(1.0)
            flush_suppressed()

    async def _expire_chunks(self) -> None:
        while True:
            await anyio.sleep(max(1.0, min(60.0, self.settings.service.chunk_expiry / 10)))
            for message_id in self.intake.chunks.expire():
                self.stats.rejected["chunk_expired"] += 1
                logger.warning("incomplete chunked message %s expired", message_id)

    def _check_producers(self, names: frozenset[str]) -> None:
        """The registered names are known: say which producer entries name no task."""
        producers = self.settings.producers
        sections = (("scheduled", producers.scheduled), ("on_start", producers.on_start))
        for section, entries in sections:
            for task in entries:
                if task not in names:
                    logger.error(
                        "producers.%s[%r] in %s: no such registered task",
                        section,
                        task,
                        self.settings.source,
                    )

    def _start_on_start_tasks(self, names: frozenset[str]) -> None:
        self._on_start_due = True
        self._release_on_start_tasks()

    def _release_on_start_tasks(self) -> None:
        """Run ``producers.on_start`` once the task names are known and everything started.

        The first worker may be ready before a broker or the metrics server fails to start:
        a start refused then runs nothing.
        """
        if self._on_start_due and self._serving:
            self._on_start_due = False
            start_on_start_tasks(self.intake, self.settings.producers.on_start)

    def _control_message(
        self, message: dict[str, Any], channel: str, origin: Origin, refused: Rejected | None
    ) -> None:
        """A control message arrived: run it (unless *refused*), answer on ``reply_to``.

        It runs in a task of its own (a command walking a long backlog lets the service go
        on meanwhile), which settles *origin* once it has answered: ``ok``, or ``rejected``
        with the reply's error; ``abandoned`` (to be delivered again) when the service
        stops before it could answer.
        """
        if refused is not None:
            self._reply(message, origin, self.control.refused(str(refused)))
        elif self._answering_closed:
            self._not_answered(message, origin)
        elif (walking := str(message.get("control")) in WALKING_COMMANDS) and (
            self._walks_in_flight >= MAX_CONTROL_IN_FLIGHT
        ):
            self.stats.rejected["overloaded"] += 1
            error = (
                f"{MAX_CONTROL_IN_FLIGHT} commands that look at every task held are being "
                "answered already: try again once they are"
            )
            self._reply(message, origin, self.control.refused(error))
            self.settlements.origin(origin, REJECTED, error)
        else:
            ended = None if origin.answering is None else origin.answering()
            self._walks_in_flight += walking
            scope = self._answer_begun()
            self._start_soon(self._answer_control, message, channel, origin, ended, scope, walking)

    async def _answer_control(
        self,
        message: dict[str, Any],
        channel: str,
        origin: Origin,
        ended: Callable[[], None] | None,
        scope: anyio.CancelScope,
        walking: bool,
    ) -> None:
        reply: dict[str, Any] | None = None
        try:
            with scope:
                reply = await self.control.answer(message, channel, origin.broker)
            if reply is None:  # the stop cut it short
                self._not_answered(message, origin)
                return
            self._reply(message, origin, reply)
        except Exception as exc:  # a bug here must cost one message, never the service
            self.stats.rejected["internal_error"] += 1
            self._internal_errors.report("control", exc, f"a message on {channel}")
            self.settlements.origin(origin, REJECTED, "internal error")
            return
        finally:
            self._walks_in_flight -= walking
            self._answer_ended(scope)
            if ended is not None:
                ended()
        error = reply.get("error")
        if error is None:
            self.settlements.origin(origin, Outcome.OK)
        else:  # a stored control message ends failed, with its reply's error
            self.settlements.origin(origin, REJECTED, str(error))

    def _not_answered(self, message: dict[str, Any], origin: Origin) -> None:
        """The service stops before it could answer *message*.

        A stored one runs again later (its reply comes then); the sender of another is told.
        """
        if origin.receipt is None:
            self._reply(message, origin, self.control.refused(NOT_ANSWERED))
        self.settlements.origin(origin, ABANDONED, NOT_ANSWERED)

    def _reply(self, message: dict[str, Any], origin: Origin, reply: dict[str, Any]) -> None:
        """Send *reply* to the control *message*'s ``reply_to``, if it has one."""
        reply_to = message.get("reply_to")
        if reply_to:
            if origin.reply is not None:
                origin.reply(str(reply_to), reply)
            elif origin.broker is not None:
                self.replies.send(origin.broker, str(reply_to), reply)

    def _worker_control(
        self,
        command: str,
        data: dict[str, Any],
        answer: Callable[[dict[str, Any]], None],
    ) -> None:
        """A bound task's control request: run it in a task of its own, then *answer*."""
        if self._answering_closed:
            return  # its worker has stopped by now
        scope = self._answer_begun()

        async def run() -> None:
            try:
                with scope:
                    answer(await self._commands.handle(command, data))
            finally:
                self._answer_ended(scope)

        self._start_soon(run)

    def _start_soon(self, function: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
        """Run *function* in a task of the service's own."""
        if self._tasks is None:
            raise RuntimeError("the service is not running")
        self._tasks.start_soon(function, *args, name="control")

    def _refused(self, refused: StartRefused) -> None:
        """A broker or the metrics server refuses to start late: stop, with exit status 2.

        A broker run again after a failure, or the metrics server once a thread could
        start. (Waiting cannot cure it, e.g. another service now holds the socket's path: an
        orchestrator that sees the service end can tell.)
        """
        if self.exit_status == EXIT_OK:
            logger.critical("cannot go on, stopping: %s", refused)
            self.exit_status = EXIT_CONFIG
        self._stop.set()

    def _worker_cannot_start(self, event: dict[str, Any]) -> None:
        """A worker's ``fatal`` event: it cannot import the task modules or ``worker.class``.

        Said as the start-up checks say it, when the worker sent its report.
        """
        if self.exit_status == EXIT_OK:
            report = event.get("report")
            if isinstance(report, dict):
                problem = refusal(report, self.settings.tasks.modules, self.settings.source)
                headline, _, details = str(problem).partition("\n")
                logger.critical("workers cannot start, stopping: %s%s", headline, Block(details))
            else:
                logger.critical("workers cannot start, stopping:%s", Block(str(event["error"])))
            self.exit_status = EXIT_TASK_MODULES
        self._stop.set()


IMPORT_REMINDER: Final = 10.0
"""Seconds between the log lines saying that the task modules are still being imported."""


async def _remind_while_importing() -> None:
    """Say, now and then, that the service still waits for the task modules to import."""
    waited = 0.0
    while True:
        await anyio.sleep(IMPORT_REMINDER)
        waited += IMPORT_REMINDER
        logger.warning("still importing tasks.modules after %.0f s: not listening yet", waited)


def run_service(settings: Settings | None = None, log_level: int = logging.INFO) -> int:
    """Run a service from *settings* (default: the config in force) until it is stopped.

    Blocks; stops gracefully on SIGTERM, SIGINT or SIGHUP. Returns the exit status: 0 after a
    graceful stop; 2 when ``tasks.modules`` is empty, or when a broker or the metrics
    server cannot start (the metrics port or the socket broker's path taken, say); 3 when
    the task modules cannot be imported, register no task, or do not register a task named
    in ``producers`` (the service then refuses to start, before any broker listens, and
    logs why).

    Call it from the main thread, where no event loop runs: it runs an asyncio loop of its
    own, and handles the stop signals. Inside a running asyncio loop, ``await
    Service(settings).run()`` instead. Once it returns, the process's logging and its
    handlers of the stop signals are as they were.

    :raises CannotRunHere: called from another thread, or inside a running event loop.
    :raises BrokerNotReady: when a broker cannot be built (a ``pg_queue`` broker whose
        tables are missing: see ``dispatcherctl migrate``).
    :raises ConfigError: when the config cannot serve (a cron schedule without croniter;
        ``$DISPATCHER_NODE_ID``, read without ``service.node_id``, not a valid node id).
    """
    _check_main_thread("run_service()")
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise CannotRunHere(
            "run_service() cannot be called inside a running event loop (it runs one of its"
            " own): there, `await Service(settings).run()`, with Service from"
            " dispatcher.server"
        )
    if settings is None:
        from dispatcher.config import get_settings

        settings = get_settings()
    return run_in_event_loop(Service(settings, log_level))


def _check_main_thread(what: str) -> None:
    """:raises CannotRunHere: when called outside the main thread (*what* says from where)."""
    if threading.current_thread() is not threading.main_thread():
        raise CannotRunHere(
            f"{what} must be called from the main thread: a dispatcher service handles the"
            " stop signals (SIGTERM, SIGINT, SIGHUP), which only the main thread can. Call"
            " it from the main thread, or run the service as a process of its own"
            " (dispatcher-standalone)"
        )


def run_in_event_loop(service: Service) -> int:
    """Run *service* in an asyncio event loop of its own until it ends; its exit status.

    Closing the loop starts a thread (to shut its default executor down): when none can
    start (the process limit reached), the service's exit status stands all the same (the
    executor's threads, if any, end with the process).
    """
    status: list[int] = []

    async def run() -> None:
        status.append(await service.run())

    try:
        anyio.run(run, backend="asyncio")
    except RuntimeError as exc:
        if not status or shortage_text(exc) is None:
            raise
    return status[0]

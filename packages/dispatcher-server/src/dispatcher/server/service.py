"""The service: one anyio task group running the brokers, the intake and the worker pool.

The composition root and the lifecycle: :class:`Service` builds the parts and wires them
together, starts them in order, and stops them in order. What each part does is its own
module's job (see the table of modules in ``docs/service.md``); ``run_service()``, which
runs a service in a loop of its own, is :mod:`dispatcher.server.service_loop`'s.
"""

from __future__ import annotations

import functools
import gc
import logging
import os

import anyio
from anyio.abc import TaskGroup

from dispatcher.config import Settings
from dispatcher.server.allowlist import ControlAllowList
from dispatcher.server.brokers.base import BrokerContext, StartRefused
from dispatcher.server.brokers.capacity import CapacityGauge
from dispatcher.server.catalogue import TaskCatalogue
from dispatcher.server.control import ControlCommands
from dispatcher.server.control_answers import ControlAnswers
from dispatcher.server.control_messages import ControlMessages
from dispatcher.server.exit_statuses import EXIT_CONFIG
from dispatcher.server.forkserver import ForkedServer, worker_options
from dispatcher.server.free_capacity import FreeCapacity
from dispatcher.server.heap import release_free_memory
from dispatcher.server.held_node_ids import take_node_id
from dispatcher.server.host import UnsupportedHost, refuse_unsupported_host
from dispatcher.server.intake import Intake
from dispatcher.server.launcher import WorkerLauncher
from dispatcher.server.library_logs import quiet_own_cancellations
from dispatcher.server.log_handler import logs_written_in_background
from dispatcher.server.log_records import get_logger
from dispatcher.server.metrics_parts import metrics_parts
from dispatcher.server.origin import Origin
from dispatcher.server.orphans import Orphans
from dispatcher.server.producer_runs import ProducerRuns
from dispatcher.server.producers import DurableRoutes
from dispatcher.server.ratelimit import flush_suppressed
from dispatcher.server.release import DISTRIBUTION, installed_version
from dispatcher.server.resources import fds_needed, raise_fd_limit
from dispatcher.server.run_place import (
    CannotRunHere,
    asyncio_named_as_the_library,
    check_asyncio_loop_runs,
    check_main_thread,
)
from dispatcher.server.scheduler import Scheduler
from dispatcher.server.service_brokers import ServiceBrokers
from dispatcher.server.service_chores import expire_chunks, flush_suppressed_lines
from dispatcher.server.service_signals import receiving_stop_signals
from dispatcher.server.service_stop import ServiceStop
from dispatcher.server.signatures import SignatureCheck
from dispatcher.server.start_up_checks import StartUpChecks
from dispatcher.server.stats import ServiceStats
from dispatcher.server.supervisor import Supervisor
from dispatcher.server.timers import Timers
from dispatcher.server.timetables import ScheduleBoard
from dispatcher.server.view import ServiceView

logger = get_logger("dispatcher.service")

__all__ = ["CannotRunHere", "Service"]  # CannotRunHere: documented here, defined in run_place


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
        self.node_id, self._release_node_id = take_node_id(settings, self)
        """The node id, and what gives it back (once the service ended, or is no more)."""
        self.stats = ServiceStats()
        # First: a cron schedule without croniter refuses the config before anything starts.
        self.schedules = ScheduleBoard(settings)
        self._stop = ServiceStop(self.node_id)
        self._checks = StartUpChecks(settings, self._stop)
        # The fork server: the one forked at start-up if given (see forkserver.fork_server),
        # else started with the pool.
        self._launcher = WorkerLauncher(
            worker_options(settings, log_level), fork_server=fork_server
        )
        self._launcher.on_imported = self._checks.imported
        self._orphans = Orphans(self._launcher.pids) if adopt_orphans else None
        """The children this process did not start, when it adopts orphans (see ``orphans``)."""
        # Brokers: the configured built-ins and plug-ins, from the registry; run() starts each.
        catalogue = TaskCatalogue()
        # None until the first worker says which tasks are registered: the intake would hold
        # what a broker pulled meanwhile, and a durable broker would claim its rows without
        # the max_attempts their tasks declare (see brokers.pg_queue.limits).
        self.capacity = CapacityGauge(
            lambda ahead: self._free.total(ahead),
            taking=lambda: catalogue.names is not None,
            busy_for=lambda: self._free.busy_for(),
        )
        """Free capacity, for brokers that pull work: none until the tasks are known. Each
        broker has a view of its own (see :meth:`FreeCapacity.for_broker`)."""
        context = BrokerContext(
            self.node_id,
            settings,
            self.stats,
            self.capacity,
            declared_attempts=lambda: catalogue.max_attempts,
        )
        self._brokers = ServiceBrokers(
            context,
            lambda name: self.capacity.view(lambda ahead: self._free.for_broker(name, ahead)),
        )
        self.brokers = self._brokers.brokers
        self.replies = self._brokers.replies
        self.settlements = self._brokers.settlements
        timers = Timers()
        catalogue.on_known(self._checks.check_producers)
        catalogue.on_known(lambda names: self.capacity.changed())
        self.scheduler = Scheduler(
            settings.service.limits,
            timers,
            self.stats,
            workers=lambda: self.supervisor.workers,
            settle=self.settlements.job,
        )
        self.scheduler.on_free = self.capacity.changed
        if (lease_ends := self._brokers.lease_ends()) is not None:
            self.scheduler.held_until = lease_ends
        self.supervisor = Supervisor(
            settings.service,
            self._launcher,
            timers,
            self.scheduler,
            catalogue,
            self.stats,
            on_fatal=self._checks.worker_cannot_start,
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
            on_control=lambda message, channel, origin, refused: self.answers.message(
                message, channel, origin, refused
            ),
            limits=settings.service.limits,
            signatures=self.signatures,
            catalogue=catalogue,
            settlements=self.settlements,
        )
        self._free = FreeCapacity(self.supervisor, self.scheduler, self.intake)
        self._producers = ProducerRuns(
            settings, self.intake, self.schedules, DurableRoutes(catalogue, self.brokers)
        )
        catalogue.on_known(self._producers.tasks_known)
        self.view = ServiceView(
            self.stats, self.scheduler, self.supervisor, self.intake, self.signatures
        )
        commands = ControlCommands(
            self.view, settings, self.stats, next_runs=self.schedules.next_runs
        )
        self._commands = commands
        allow_list = ControlAllowList(settings.brokers)
        self._checks.check_allow_lists(allow_list, commands.table)
        self.control = ControlMessages(commands, allow_list, self.stats, self.node_id)
        self.answers = ControlAnswers(self.control, self.stats, self.settlements, self.replies)
        """Control messages and bound tasks' requests, each answered in a task of its own."""
        self.supervisor.on_control = self.answers.request
        self.metrics, self.view.queue_sampler = metrics_parts(self.view, settings, self.node_id)
        self.view.metrics_server = self.metrics
        self._stop.kill.append(self.supervisor.kill_all)
        if self._orphans is not None:
            self._stop.kill.append(self._orphans.kill)
        self._started = False

    async def run(self) -> int:
        """Serve until SIGTERM, SIGINT or SIGHUP (or :meth:`stop`); return the exit status.

        Refuses to start, before any broker listens, when ``tasks.modules`` is empty
        (``EXIT_CONFIG``), or when the fork server reports that a task module cannot be
        imported, that the modules register no task, or that ``producers.scheduled`` or
        ``producers.on_start`` names a task they do not register (``EXIT_TASK_MODULES``; see
        :mod:`dispatcher.server.exit_statuses`).

        Leaves the process as it found it (a service may run in the application's own
        process): its logging, and its handlers of the stop signals (the Python-level ones
        and the loop's), which the service's replace while it runs. The service's own
        handler of standard error (``dispatcher-standalone``'s, ``rundispatcher``'s) writes
        from a thread while it runs, so that the loop never waits for the log's reader (see
        :mod:`dispatcher.server.log_writer`).

        :raises UnsupportedHost: this host cannot run the service (not Linux 5.3 or later,
            or ``pidfd_open`` or ``pidfd_send_signal`` blocked): it would run without workers.
        :raises CannotRunHere: outside the main thread, or where no asyncio loop runs
            (under trio, say).
        """
        try:
            try:
                refuse_unsupported_host()
            except UnsupportedHost:
                self._launcher.close()  # (its fork server, if it was given one)
                raise
            check_main_thread("Service.run()")
            check_asyncio_loop_runs()
            with (
                asyncio_named_as_the_library(),
                quiet_own_cancellations(),
                logs_written_in_background(),
            ):
                return await self._run()
        finally:
            if self._release_node_id is not None:
                self._release_node_id()

    async def _run(self) -> int:
        servers = (self.settings.brokers.socket is not None) + (self.metrics is not None)
        raise_fd_limit(fds_needed(self.supervisor.max_workers, servers))
        if not self._checks.modules_named():
            self._launcher.close()
            return EXIT_CONFIG
        try:
            with receiving_stop_signals(self._stop.on_signal):
                async with anyio.create_task_group() as task_group:
                    self.answers.tasks = task_group
                    if self._orphans is not None:
                        await task_group.start(self._orphans.run, name="orphans")
                    if await self._checks.task_modules_ready(self._launcher):
                        await self._serve(task_group)
                    else:
                        self._launcher.close()
                    task_group.cancel_scope.cancel()
        finally:
            if self._orphans is not None:
                self._orphans.kill()  # (the fork servers, stopped by now, are spared)
        if self._started or self._stop.asked.is_set():  # (not after refusing to start)
            logger.info(
                "dispatcher service %s stopped",
                self.node_id,
                extra=self._stop.fields("service_stopped"),
            )
        return self._stop.exit_status

    async def _serve(self, task_group: TaskGroup) -> None:
        """Start the pool, the brokers and the rest in *task_group*; serve until stopped."""
        self._started = True
        # A stop signal ends each start-up step: none that waits (for a thread, say) holds
        # the stop up.
        starting = anyio.CancelScope()
        task_group.start_soon(self._stop.cancel_on_stop, starting, name="start-up-abort")
        try:
            with starting:
                await self._start(task_group)
        except StartRefused as refused:
            self._stop.refused_at_start(refused)
        if self._stop.asked.is_set():
            await self._shut_down()  # what did start stops, as on a stop signal; nothing more
            return
        self.view.phase = "serving"
        self._producers.serving()
        expiry = self.settings.service.chunk_expiry
        chunks, rejected = self.intake.chunks, self.stats.rejected
        task_group.start_soon(expire_chunks, chunks, expiry, rejected, name="chunk-expiry")
        task_group.start_soon(flush_suppressed_lines, name="suppressed-lines")
        self._producers.start_scheduled(task_group)
        release_free_memory()  # what start-up allocated and freed
        await self._stop.asked.wait()
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
            extra=self._stop.fields("service_started"),
        )
        if not self.brokers:
            logger.warning("no brokers in %s: nothing to listen to", self.settings.source)
        steps = self._brokers.steps(
            self._deliver, self._stop.refused, self._stop.asked, self.stats.broker
        )
        steps.insert(0, ("large-payloads", self.intake.large.run))  # before brokers deliver
        if self.metrics is not None:
            steps.append(
                ("metrics", functools.partial(self.metrics.run, on_refused=self._stop.refused))
            )
        if self.view.queue_sampler is not None:
            steps.append(("queue-sampler", self.view.queue_sampler.run))
        for name, step in steps:
            await task_group.start(step, name=name)

    def stop(self) -> None:
        """Begin a graceful shutdown."""
        self._stop.stop()

    @property
    def exit_status(self) -> int:
        """The exit status the service ends with (so far)."""
        return self._stop.exit_status

    def _deliver(self, payload: str, origin: Origin) -> None:
        """What brokers hand every payload to (see ``brokers.base.Deliver``)."""
        self.intake.receive(payload, origin.channel, origin)

    async def _shut_down(self) -> None:
        self.view.phase = "stopping"
        flush_suppressed(now=True)  # what the last second held back, before the stop's lines
        self._producers.stop_scheduled()  # no tick runs while the service stops
        self.intake.stop_accepting()
        self._brokers.stop_receiving()
        self._commands.stopping.set()
        await self.supervisor.shutdown(self.settings.service.shutdown_grace)
        self._launcher.close()
        self.intake.close()
        await self.answers.end(self.settings.service.shutdown_grace)
        await self._brokers.flush()
        pending = len(self.intake.chunks)
        if pending:
            logger.warning("dropped %d incomplete chunked messages", pending)

"""The service: one anyio task group running the listener, the intake and the worker pool."""

from __future__ import annotations

import gc
import logging
import os
import re
import signal
import socket
from collections.abc import AsyncIterator
from typing import Any, Final

import anyio
from anyio import CancelScope

from dispatcher.config import Settings
from dispatcher.config.settings import BrokerName
from dispatcher.schema import is_valid_channel_name, validator
from dispatcher.server.allowlist import ControlAllowList
from dispatcher.server.control import ControlCommands
from dispatcher.server.intake import Intake
from dispatcher.server.launcher import WorkerLauncher
from dispatcher.server.listener import PgNotifyListener
from dispatcher.server.logsafe import Block, get_logger
from dispatcher.server.metrics import MetricsServer
from dispatcher.server.origin import Origin
from dispatcher.server.pool import WorkerPool
from dispatcher.server.producers import run_schedule, start_on_start_tasks
from dispatcher.server.ratelimit import RateLimitedLog
from dispatcher.server.rejection import Rejected
from dispatcher.server.replies import ReplySender
from dispatcher.server.signatures import SignatureCheck
from dispatcher.server.socket_broker import SocketBroker
from dispatcher.server.stats import ServiceStats
from dispatcher.server.worker import WorkerOptions

logger = get_logger("dispatcher.service")

EXIT_OK: Final = 0
EXIT_FORCED: Final = 1
EXIT_TASK_MODULES: Final = 3
"""Exit status when the task modules cannot be imported."""


def default_node_id() -> str:
    """A node id from the host name and process id, within the channel-name rule.

    Short enough (44 bytes at most) to fit whole in the listener's ``application_name``.
    """
    host = re.sub(r"[^A-Za-z0-9_.:-]", "-", socket.gethostname())[:32]
    return f"{host}-{os.getpid()}"


class Service:
    """A dispatcher service built from a config; :meth:`run` it inside an anyio event loop."""

    def __init__(self, settings: Settings, log_level: int = logging.INFO) -> None:
        self.settings = settings
        self.node_id = settings.service.node_id or default_node_id()
        self.stats = ServiceStats()
        self.exit_status = EXIT_OK
        self._launcher = WorkerLauncher(
            WorkerOptions(
                worker_id=0,
                modules=tuple(settings.tasks.modules),
                hooks_class=settings.worker.worker_class,
                idle_timeout=settings.worker.idle_timeout,
                log_level=log_level,
                max_output_bytes=settings.worker.max_output_bytes,
            )
        )
        self.pool = WorkerPool(
            settings.service,
            self._launcher,
            self.stats,
            on_ready=self._tasks_known,
            on_fatal=self._task_modules_failed,
            on_control=self._control,
            max_memory=settings.worker.max_memory,
        )
        self._launcher.on_exit = self.pool.worker_exited
        self.signatures = SignatureCheck(settings.security)
        self.intake = Intake(
            self.pool,
            self.stats,
            settings.service.chunk_expiry,
            on_control=self._control_message,
            limits=settings.service.limits,
            signatures=self.signatures,
        )
        self.control = ControlCommands(self)
        self._allow_list = ControlAllowList(settings.brokers)
        for broker, name in self._allow_list.unknown(self.control.table):
            logger.warning(
                "brokers.%s.allow_control in %s: %r is not a control command",
                broker,
                settings.source,
                name,
            )
        self._control_validator = validator("control-message")
        self._control_rejections = RateLimitedLog(logger, logging.WARNING)
        pg_notify = settings.brokers.pg_notify
        self.replies = None if pg_notify is None else ReplySender(pg_notify.conninfo)
        self.listener = (
            None
            if pg_notify is None
            else PgNotifyListener(
                pg_notify,
                application_name=f"dispatcher-service:{self.node_id}"[:63],
                on_message=self.intake.receive,
                stats=self.stats,
            )
        )
        socket_settings = settings.brokers.socket
        self.socket = (
            None
            if socket_settings is None
            else SocketBroker(socket_settings.path, self.intake.receive, stats=self.stats)
        )
        metrics = settings.service.metrics
        self.metrics = None if metrics is None else MetricsServer(self, metrics.host, metrics.port)
        self._stop = anyio.Event()
        self._listening: CancelScope | None = None

    async def run(self) -> int:
        """Serve until SIGTERM or SIGINT (or :meth:`stop`); return the exit status."""
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(self._watch_signals, signals, name="signals")
                await task_group.start(self.pool.run, name="worker-pool")
                # What exists now lives as long as the service: keep it out of every
                # future garbage collection.
                gc.freeze()
                logger.info(
                    "dispatcher service %s started (pid %d, %d-%d workers)",
                    self.node_id,
                    os.getpid(),
                    self.pool.min_workers,
                    self.pool.max_workers,
                )
                if self.listener is None:
                    logger.warning(
                        "no brokers.pg_notify in %s: nothing to listen to", self.settings.source
                    )
                else:
                    task_group.start_soon(self._listen, name="pg-notify-listener")
                if self.replies is not None:
                    task_group.start_soon(self.replies.run, name="control-replies")
                if self.socket is not None:
                    await task_group.start(self._serve_socket, name="socket-broker")
                if self.metrics is not None:
                    await task_group.start(self.metrics.run, name="metrics")
                task_group.start_soon(self._expire_chunks, name="chunk-expiry")
                for task, entry in self.settings.producers.scheduled.items():
                    task_group.start_soon(
                        run_schedule, self.intake, task, entry, name=f"scheduled:{task}"
                    )
                await self._stop.wait()
                await self._shut_down()
                task_group.cancel_scope.cancel()
        logger.info("dispatcher service %s stopped", self.node_id)
        return self.exit_status

    def stop(self) -> None:
        """Begin a graceful shutdown."""
        self._stop.set()

    async def _serve_socket(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        assert self.socket is not None
        try:
            await self.socket.run(task_status=task_status)
        except OSError as exc:
            logger.error("cannot serve the socket broker at %s: %s", self.socket.path, exc)
            task_status.started()

    async def _listen(self) -> None:
        assert self.listener is not None
        with anyio.CancelScope() as self._listening:
            await self.listener.run()

    async def _watch_signals(self, signals: AsyncIterator[signal.Signals]) -> None:
        async for number in signals:
            if not self._stop.is_set():
                logger.info("received %s: shutting down", signal.Signals(number).name)
                self._stop.set()
            else:
                logger.warning("received %s again: forcing exit now", signal.Signals(number).name)
                self.pool.kill_all()
                os._exit(EXIT_FORCED)

    async def _shut_down(self) -> None:
        if self._listening is not None:
            self._listening.cancel()
        await self.pool.shutdown(self.settings.service.shutdown_grace)
        self._launcher.close()
        pending = len(self.intake.chunks)
        if pending:
            logger.warning("dropped %d incomplete chunked messages", pending)

    async def _expire_chunks(self) -> None:
        while True:
            await anyio.sleep(max(1.0, min(60.0, self.settings.service.chunk_expiry / 10)))
            for message_id in self.intake.chunks.expire():
                self.stats.rejected["chunk_expired"] += 1
                logger.warning("incomplete chunked message %s expired", message_id)

    def _tasks_known(self, names: frozenset[str]) -> None:
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
        self.intake.tasks_known(names)
        start_on_start_tasks(self.intake, producers.on_start)

    def _control(self, command: str, data: dict[str, Any]) -> dict[str, Any]:
        return self.control.handle(command, data)

    def _control_message(
        self, message: dict[str, Any], channel: str, origin: Origin, refused: Rejected | None
    ) -> None:
        """A control message arrived: run it (unless *refused*), answer on ``reply_to``."""
        if refused is None:
            reply = self.run_control(message, channel, origin.broker)
        else:
            reply = {"error": str(refused), "node_id": self.node_id}
        reply_to = message.get("reply_to")
        if not reply_to:
            return
        if origin.reply is not None:
            origin.reply(str(reply_to), reply)
        elif is_valid_channel_name(reply_to) and self.replies is not None:
            self.replies.queue(str(reply_to), reply)

    def run_control(
        self, message: dict[str, Any], where: str, broker: BrokerName | None
    ) -> dict[str, Any]:
        """Run a control message from *where* over *broker*; return the reply with ``node_id``.

        The message must match its schema and its command be allowed over *broker*.
        """
        refusal: str | None
        if not self._control_validator.is_valid(message):
            problems = "; ".join(str(p) for p in self._control_validator.problems(message))
            reason, refusal = "invalid_control", f"invalid control message: {problems}"
        else:
            reason = "control_not_allowed"
            refusal = self._allow_list.refusal(message["control"], broker)
        if refusal is not None:
            self.stats.rejected[reason] += 1
            self._control_rejections.log("rejected control message on %s: %s", where, refusal)
            reply = {"error": refusal}
        else:
            self.stats.control += 1
            reply = self.control.handle(message["control"], message.get("control_data"))
        return {**reply, "node_id": self.node_id}

    def _task_modules_failed(self, error: str) -> None:
        if self.exit_status == EXIT_OK:
            logger.critical(
                "cannot import the task modules (tasks.modules in %s):%s",
                self.settings.source,
                Block(error),
            )
            self.exit_status = EXIT_TASK_MODULES
        self._stop.set()


def run_service(settings: Settings | None = None, log_level: int = logging.INFO) -> int:
    """Run a service from *settings* (default: the config in force) until it is stopped.

    Blocks; stops gracefully on SIGTERM or SIGINT. Returns the exit status: 0 after a
    graceful stop, 3 when the task modules cannot be imported.
    """
    if settings is None:
        from dispatcher.config import get_settings

        settings = get_settings()
    service = Service(settings, log_level)
    return anyio.run(service.run, backend="asyncio")

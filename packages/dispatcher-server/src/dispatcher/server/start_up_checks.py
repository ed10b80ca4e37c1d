"""The start-up checks on the task modules and the config, and what the service says of them.

The service refuses to start, before any broker listens, when ``tasks.modules`` is empty,
when the fork server reports that a task module cannot be imported, that the modules
register no task, or that ``producers`` names a task they do not register (see
:mod:`dispatcher.server.task_imports`, which finds the problems); a worker that cannot
import them later stops it, said the same way. Producer entries that name no registered
task are said once the names are known, ``allow_control`` names that are no control
command as the service is built.
"""

from __future__ import annotations

import errno
from collections.abc import Collection
from typing import Any, Final, Protocol

import anyio

from dispatcher.config import Settings
from dispatcher.server.allowlist import ControlAllowList
from dispatcher.server.exit_statuses import EXIT_CONFIG, EXIT_OK, EXIT_TASK_MODULES
from dispatcher.server.log_arguments import Block
from dispatcher.server.log_records import get_logger
from dispatcher.server.log_text import first_line
from dispatcher.server.resources import PROCESS_LIMIT
from dispatcher.server.service_stop import ServiceStop
from dispatcher.server.task_imports import missing_modules, refusal, unregistered_producers

logger = get_logger("dispatcher.service")

IMPORT_REMINDER: Final = 10.0
"""Seconds between the log lines saying that the task modules are still being imported."""


class ForkServerStart(Protocol):
    """What starts the fork server, which imports the task modules and reports on them."""

    def start(self) -> None:
        """Start the fork server.

        :raises OSError: when it cannot start.
        """


class StartUpChecks:
    """The start-up checks of a service run with *settings*.

    When they fail, *stop* ends the service, with the exit status that says why.
    :meth:`imported` is told the fork server's import report, which
    :meth:`task_modules_ready` waits for.
    """

    def __init__(self, settings: Settings, stop: ServiceStop) -> None:
        self._settings = settings
        self._stop = stop
        self._import_report: dict[str, Any] | None = None
        self._imported = anyio.Event()
        """Set when the first fork server has reported on the task modules (or ended)."""

    def modules_named(self) -> bool:
        """Whether ``tasks.modules`` names modules; if not, say so (the service cannot start)."""
        missing = missing_modules(self._settings.tasks.modules, self._settings.source)
        if missing is not None:
            logger.critical("cannot start: %s", missing)
            return False
        return True

    def imported(self, report: dict[str, Any] | None) -> None:
        """The fork server's import report (``None``: it ended); only the first one counts."""
        if not self._imported.is_set():
            self._import_report = report
            self._imported.set()

    async def task_modules_ready(self, launcher: ForkServerStart) -> bool:
        """Start the fork server and wait for its word on the task modules.

        Returns whether the service may go on: ``False`` (with the stop's exit status set)
        when the modules cannot serve, or when a signal came first.
        """
        try:
            launcher.start()
        except OSError as exc:  # EAGAIN: the process limit, which a pause cures not soon
            why = f"{first_line(exc)}: {PROCESS_LIMIT}" if exc.errno == errno.EAGAIN else exc
            logger.critical("cannot start the fork server: %s", why)
            self._stop.exit_status = EXIT_CONFIG
            return False
        async with anyio.create_task_group() as waiting:

            async def until(event: anyio.Event) -> None:
                await event.wait()
                waiting.cancel_scope.cancel()

            waiting.start_soon(until, self._imported)
            waiting.start_soon(until, self._stop.asked)
            waiting.start_soon(_remind_while_importing)
        if self._stop.asked.is_set():
            return False
        settings = self._settings
        problem = refusal(self._import_report, settings.tasks.modules, settings.source)
        if problem is None:
            producers = settings.producers
            problem = unregistered_producers(
                self._import_report,
                {"scheduled": producers.scheduled, "on_start": producers.on_start},
                settings.source,
            )
        if problem is None:
            return True
        headline, _, details = problem.partition("\n")
        logger.critical("cannot start: %s%s", headline, Block(details))
        self._stop.exit_status = EXIT_TASK_MODULES
        return False

    def check_producers(self, names: frozenset[str]) -> None:
        """The registered names are known: say which producer entries name no task."""
        producers = self._settings.producers
        sections = (("scheduled", producers.scheduled), ("on_start", producers.on_start))
        for section, entries in sections:
            for task in entries:
                if task not in names:
                    logger.error(
                        "producers.%s[%r] in %s: no such registered task",
                        section,
                        task,
                        self._settings.source,
                    )

    def check_allow_lists(self, allow_list: ControlAllowList, commands: Collection[str]) -> None:
        """Say which names ``brokers.*.allow_control`` allows that are not among *commands*."""
        for broker, name in allow_list.unknown(commands):
            logger.warning(
                "brokers.%s.allow_control in %s: %r is not a control command",
                broker,
                self._settings.source,
                name,
            )

    def worker_cannot_start(self, event: dict[str, Any]) -> None:
        """A worker's ``fatal`` event: it cannot import the task modules or ``worker.class``.

        Said as the start-up checks say it, when the worker sent its report; the service
        stops.
        """
        if self._stop.exit_status == EXIT_OK:
            report = event.get("report")
            if isinstance(report, dict):
                problem = refusal(report, self._settings.tasks.modules, self._settings.source)
                headline, _, details = str(problem).partition("\n")
                logger.critical("workers cannot start, stopping: %s%s", headline, Block(details))
            else:
                logger.critical("workers cannot start, stopping:%s", Block(str(event["error"])))
            self._stop.exit_status = EXIT_TASK_MODULES
        self._stop.asked.set()


async def _remind_while_importing() -> None:
    """Say, now and then, that the service still waits for the task modules to import."""
    waited = 0.0
    while True:
        await anyio.sleep(IMPORT_REMINDER)
        waited += IMPORT_REMINDER
        logger.warning("still importing tasks.modules after %.0f s: not listening yet", waited)

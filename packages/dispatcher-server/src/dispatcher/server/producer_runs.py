"""When a service runs its producers, ``producers.scheduled`` and ``producers.on_start``.

``producers.scheduled`` run while it serves; ``producers.on_start`` once its tasks are known
and everything started. What each producer does is :mod:`dispatcher.server.producers`' job;
this is when.
"""

from __future__ import annotations

import anyio
from anyio.abc import TaskGroup

from dispatcher.config import Settings
from dispatcher.server.intake import Intake
from dispatcher.server.producers import DurableRoutes, run_schedule, start_on_start_tasks
from dispatcher.server.timetables import ScheduleBoard


class ProducerRuns:
    """Runs the producers of a service run with *settings*, through its *intake*."""

    def __init__(
        self,
        settings: Settings,
        intake: Intake,
        schedules: ScheduleBoard,
        durable_routes: DurableRoutes,
    ) -> None:
        self._settings = settings
        self._intake = intake
        self._schedules = schedules
        self._durable_routes = durable_routes
        self._scheduled: anyio.CancelScope | None = None
        """Where ``producers.scheduled`` run: cancelled as the service begins to stop."""
        self._serving = False
        """Everything started (brokers, metrics): ``producers.on_start`` may run."""
        self._on_start_due = False
        """The task names are known: ``producers.on_start`` runs once serving (if ever)."""

    def tasks_known(self, names: frozenset[str]) -> None:
        """The registered names are known: ``producers.on_start`` runs once serving."""
        self._on_start_due = True
        self._release_on_start_tasks()

    def serving(self) -> None:
        """Everything started: ``producers.on_start`` runs now (or once the tasks are known)."""
        self._serving = True
        self._release_on_start_tasks()

    def start_scheduled(self, task_group: TaskGroup) -> None:
        """Run ``producers.scheduled`` in *task_group* until :meth:`stop_scheduled`."""
        self._scheduled = anyio.CancelScope()
        task_group.start_soon(self._run_scheduled, self._scheduled, name="schedules")

    def stop_scheduled(self) -> None:
        """The service begins to stop: no tick runs any more."""
        if self._scheduled is not None:
            self._scheduled.cancel()

    def _release_on_start_tasks(self) -> None:
        """Run ``producers.on_start`` once the task names are known and everything started.

        The first worker may be ready before a broker or the metrics server fails to start:
        a start refused then runs nothing.
        """
        if self._on_start_due and self._serving:
            self._on_start_due = False
            start_on_start_tasks(self._intake, self._settings.producers.on_start)

    async def _run_scheduled(self, scope: anyio.CancelScope) -> None:
        """Run ``producers.scheduled``, each in a task of its own, until *scope* is cancelled."""
        with scope:
            async with anyio.create_task_group() as task_group:
                for task, entry in self._settings.producers.scheduled.items():
                    task_group.start_soon(
                        run_schedule,
                        self._intake,
                        task,
                        entry,
                        self._schedules,
                        self._durable_routes,
                        name=f"scheduled:{task}",
                    )

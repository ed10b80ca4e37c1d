"""Control commands: an explicit table of what may be asked of a service, and how.

Here they serve bound tasks (``bind=True``), which call ``control()`` over their worker's
connection to the service.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from dispatcher.config import Settings
from dispatcher.server.intake import Intake, Rejected
from dispatcher.server.pool import WorkerPool

logger = logging.getLogger("dispatcher.control")

Reply = dict[str, Any]


class ControlError(Exception):
    """A control command cannot be carried out; the message says why."""


class ControlCommands:
    """Runs control commands against a service's pool and intake."""

    def __init__(self, settings: Settings, pool: WorkerPool, intake: Intake) -> None:
        self._settings = settings
        self._pool = pool
        self._intake = intake
        self._table: dict[str, Callable[[Mapping[str, Any]], Reply]] = {
            "alive": lambda data: {},
            "running": self.running,
            "cancel": self.cancel,
            "run": self.run,
        }

    def handle(self, command: str, data: Mapping[str, Any]) -> Reply:
        """Run *command* with *data*; return its reply (``{"error": ...}`` when it fails)."""
        handler = self._table.get(command)
        if handler is None:
            known = ", ".join(sorted(self._table))
            return {"error": f"unknown command {command!r} (commands: {known})"}
        try:
            return handler(data)
        except ControlError as exc:
            return {"error": str(exc)}
        except Exception:
            logger.exception("control command %s failed", command)
            return {"error": f"the {command} command failed inside the service; see its log"}

    def running(self, data: Mapping[str, Any]) -> Reply:
        """The tasks running, queued, blocked and delayed, optionally filtered."""
        uuid, task = _filters(data)
        return {"tasks": self._pool.running(uuid, task)}

    def cancel(self, data: Mapping[str, Any]) -> Reply:
        """Cancel the tasks matching ``uuid`` and/or ``task``."""
        uuid, task = _filters(data)
        if uuid is None and task is None:
            raise ControlError("cancel needs a filter: a uuid, a task name, or both")
        return {"cancelled": self._pool.cancel(uuid, task)}

    def run(self, data: Mapping[str, Any]) -> Reply:
        """Start a task: *data* is a task message."""
        if not self._settings.producers.control:
            raise ControlError(
                f"the run command is disabled: add 'control: {{}}' under 'producers' in "
                f"{self._settings.source} to enable it"
            )
        try:
            uuid = self._intake.submit(dict(data), "control")
        except Rejected as rejected:
            raise ControlError(f"task refused: {rejected}") from None
        return {"ack": True, "uuid": uuid}


def _filters(data: Mapping[str, Any]) -> tuple[str | None, str | None]:
    uuid, task = data.get("uuid"), data.get("task")
    for name, value in (("uuid", uuid), ("task", task)):
        if value is not None and not isinstance(value, str):
            raise ControlError(f"{name} must be a string, not {type(value).__name__}")
    return uuid, task

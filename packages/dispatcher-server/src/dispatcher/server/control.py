"""Control commands: an explicit table of what may be asked of a service, and how.

Each command has a handler and a JSON Schema for its ``control_data``; bad data gets an
error reply naming the problem. Commands arrive over a broker (a control message) or from a
bound task (``dispatcher.control(...)`` over its worker's socket).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from dispatcher.config import Settings
from dispatcher.schema import LOG_LEVELS, Validator
from dispatcher.server.logsafe import get_logger
from dispatcher.server.ratelimit import InternalErrorLog
from dispatcher.server.rejection import Rejected
from dispatcher.server.stats import ServiceStats

logger = get_logger("dispatcher.control")

Reply = dict[str, Any]

_FILTER_PROPERTIES: dict[str, Any] = {
    "uuid": {"type": "string", "minLength": 1, "description": "Only the task with this uuid."},
    "task": {"type": "string", "minLength": 1, "description": "Only tasks with this name."},
}
_FILTER: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": _FILTER_PROPERTIES,
}
_NOTHING: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": {}}


class ControlTarget(Protocol):
    """What control commands act on and read: the service, seen through a narrow window."""

    def running(self, uuid: str | None, task: str | None) -> list[dict[str, Any]]:
        """Jobs running, queued, blocked and delayed, filtered by uuid and/or task."""

    def cancel(self, uuid: str | None, task: str | None) -> list[dict[str, Any]]:
        """Cancel the jobs matching the filter (at least one of the two); return them."""

    def cancel_all(self) -> list[dict[str, Any]]:
        """Cancel every job; return them."""

    def workers(self) -> list[dict[str, Any]]:
        """Each worker: id, pid, status, age, tasks done, current task, memory."""

    def counts(self) -> dict[str, Any]:
        """Jobs held (``queued``, ``blocked``, ``delayed``) and ``workers`` (count, min, max)."""

    def chunks(self) -> dict[str, Any]:
        """Incomplete chunked messages being assembled."""

    def signatures(self) -> dict[str, Any]:
        """The signature settings in force and the replay guard's state."""

    def metrics_endpoint(self) -> dict[str, Any]:
        """Whether the metrics endpoint is on, and where."""

    def submit(self, message: dict[str, Any]) -> str:
        """Submit a task message made here; return its uuid (raises ``Rejected``)."""


class ControlError(Exception):
    """A control command cannot be carried out; the message says why."""


@dataclass(frozen=True)
class Command:
    """One entry of the command table."""

    handler: Callable[[Mapping[str, Any]], Reply]
    data: Validator
    """Checks the command's ``control_data``."""


def _schema(name: str, schema: Mapping[str, Any]) -> Validator:
    full = {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": name, **schema}
    return Validator("control-message", full)


class ControlCommands:
    """Runs control commands against a :class:`ControlTarget`."""

    def __init__(self, target: ControlTarget, settings: Settings, stats: ServiceStats) -> None:
        self._target = target
        self._settings = settings
        self._stats = stats
        self._started = time.monotonic()
        self._internal_errors = InternalErrorLog(logger)
        cancel_data = {
            **_FILTER,
            "properties": {
                **_FILTER_PROPERTIES,
                "all": {"const": True, "description": "Cancel every task: must be explicit."},
            },
        }
        level_data = {
            "type": "object",
            "required": ["level"],
            "additionalProperties": False,
            "properties": {"level": {"enum": [*LOG_LEVELS, *(n.lower() for n in LOG_LEVELS)]}},
        }
        self.table: dict[str, Command] = {}
        for name, handler, data in (
            ("alive", lambda data: {}, _NOTHING),
            ("running", self.running, _FILTER),
            ("cancel", self.cancel, cancel_data),
            ("workers", self.workers, _NOTHING),
            ("status", self.status, _NOTHING),
            ("producers", self.producers, _NOTHING),
            ("chunks", self.chunks, _NOTHING),
            ("set_log_level", self.set_log_level, level_data),
            ("metrics", self.metrics, _NOTHING),
            ("run", self.run, {"type": "object"}),
        ):
            self.table[name] = Command(handler, _schema(name, data))

    def handle(self, command: str, data: Mapping[str, Any] | None) -> Reply:
        """Run *command* with *data*; return its reply (``{"error": ...}`` when it fails)."""
        entry = self.table.get(command)
        if entry is None:
            known = ", ".join(sorted(self.table))
            return {"error": f"unknown command {command!r} (commands: {known})"}
        data = {} if data is None else data
        if not entry.data.is_valid(data):
            problems = "; ".join(f"control_data.{p}" for p in entry.data.problems(data))
            return {"error": f"invalid control_data for {command}: {problems}"}
        try:
            return entry.handler(data)
        except ControlError as exc:
            return {"error": str(exc)}
        except Exception as exc:
            self._stats.rejected["internal_error"] += 1
            self._internal_errors.report(f"control command {command}", exc)
            return {"error": f"the {command} command failed inside the service; see its log"}

    # -- the commands ----------------------------------------------------------------------

    def running(self, data: Mapping[str, Any]) -> Reply:
        """The tasks running, queued, blocked and delayed, optionally filtered."""
        return {"tasks": self._target.running(data.get("uuid"), data.get("task"))}

    def cancel(self, data: Mapping[str, Any]) -> Reply:
        """Cancel the tasks matching ``uuid`` and/or ``task`` (or all, if asked explicitly)."""
        uuid, task = data.get("uuid"), data.get("task")
        if data.get("all"):
            if uuid or task:
                raise ControlError("cancel: give either all or a filter, not both")
            return {"cancelled": self._target.cancel_all()}
        if uuid is None and task is None:
            raise ControlError("cancel needs a filter: a uuid, a task name, or both (or all: true)")
        return {"cancelled": self._target.cancel(uuid, task)}

    def workers(self, data: Mapping[str, Any]) -> Reply:
        """Each worker: id, pid, status, age, tasks done, current task, memory."""
        return {"workers": self._target.workers()}

    def status(self, data: Mapping[str, Any]) -> Reply:
        """Everything at a glance: counters, queue lengths, workers, listener."""
        stats = self._stats
        counts = self._target.counts()
        return {
            "pid": os.getpid(),
            "uptime": round(time.monotonic() - self._started, 3),
            "received": stats.received,
            "rejected": dict(stats.rejected),
            "finished": dict(stats.finished),
            "discarded": stats.discarded,
            "queued": counts["queued"],
            "blocked": counts["blocked"],
            "delayed": counts["delayed"],
            "workers": {
                **counts["workers"],
                "started": stats.workers_started,
                "lost": stats.workers_lost,
            },
            "listener": {
                "connects": stats.listener_connects,
                "failures": stats.listener_failures,
                "self_checks": stats.self_checks,
            },
            "chunks": self._target.chunks(),
            "signatures": self._target.signatures(),
        }

    def producers(self, data: Mapping[str, Any]) -> Reply:
        """The producers configured: scheduled entries, on-start entries, control."""
        producers = self._settings.producers
        scheduled = producers.scheduled
        return {
            "scheduled": {task: {"schedule": e.schedule} for task, e in scheduled.items()},
            "on_start": sorted(producers.on_start),
            "control": producers.control,
        }

    def chunks(self, data: Mapping[str, Any]) -> Reply:
        """Incomplete chunked messages being assembled."""
        return self._target.chunks()

    def metrics(self, data: Mapping[str, Any]) -> Reply:
        """Whether the metrics endpoint is on, and where."""
        return self._target.metrics_endpoint()

    def set_log_level(self, data: Mapping[str, Any]) -> Reply:
        """Change the level of the service's ``dispatcher`` loggers."""
        target = get_logger("dispatcher")
        previous = logging.getLevelName(target.getEffectiveLevel())
        level = str(data["level"]).upper()
        target.setLevel(level)
        return {"logger": "dispatcher", "level": level, "previous_level": previous}

    def run(self, data: Mapping[str, Any]) -> Reply:
        """Start a task: *data* is a task message."""
        settings = self._settings
        if not settings.producers.control:
            raise ControlError(
                f"the run command is disabled: add 'control: {{}}' under 'producers' in "
                f"{settings.source} to enable it"
            )
        try:
            uuid = self._target.submit(dict(data))
        except Rejected as rejected:
            raise ControlError(f"task refused: {rejected}") from None
        return {"ack": True, "uuid": uuid}

"""Control commands: an explicit table of what may be asked of a service, and how.

Each command has a handler and a JSON Schema for its ``control_data``; bad data gets an
error reply naming the problem. Commands arrive over a broker (a control message) or from a
bound task (``dispatcher.control(...)`` over its worker's socket).

Every command dispatcherd has answers in dispatcherd's shape, so that its clients (its
``dispatcherctl``, AWX) read our replies; what we know beyond that is added as extra keys
where no dispatcherd reader trips on them (see ``docs/control.md``).
"""

from __future__ import annotations

import inspect
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import anyio

from dispatcher.config import Settings
from dispatcher.schema import Outcome, Validator
from dispatcher.server.control_shapes import (
    FILTER_PROPERTIES,
    MAX_LISTED_JOBS,
    Listing,
    NextRuns,
    TaskFilter,
    producers_reply,
)
from dispatcher.server.control_target import ControlTarget
from dispatcher.server.control_walks import every_job, list_found, matching_jobs, settle_taken
from dispatcher.server.jobs import JobPick
from dispatcher.server.log_arguments import Phrase
from dispatcher.server.log_handler import log_lines_dropped
from dispatcher.server.log_records import get_logger
from dispatcher.server.ratelimit import InternalErrorLog
from dispatcher.server.rejection import Rejected
from dispatcher.server.release import installed_version
from dispatcher.server.stats import ServiceStats
from dispatcher.server.walk_turns import Turns

logger = get_logger("dispatcher.control")

Reply = dict[str, Any]

WALKING_COMMANDS: Final = frozenset({"running", "cancel", "status"})
"""The commands that look at every task held, one at a time (the others answer at once)."""

STATUS_WAITING_LIMIT: Final = 100
"""Most waiting tasks (queued, blocked, delayed) ``status`` lists under ``running``: beyond,
it lists the tasks on workers only, and ``running_omitted`` counts the others (and those
beyond :data:`~dispatcher.server.control_shapes.MAX_LISTED_BYTES`)."""

CANCELLED_OUTCOMES: Final = frozenset(
    {
        Outcome.CANCELLED,
        Outcome.TIMEOUT,
        Outcome.KILLED,
        Outcome.WORKER_LOST,
        Outcome.MEMORY_EXCEEDED,
    }
)
"""Outcomes dispatcherd would count in ``canceled_count`` (the others, in ``finished_count``)."""

_FILTER: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": FILTER_PROPERTIES,
}
_NOTHING: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": {}}


class ControlError(Exception):
    """A control command cannot be carried out; the message says why."""


@dataclass(frozen=True)
class Command:
    """One entry of the command table."""

    handler: Callable[[Mapping[str, Any]], Reply | Awaitable[Reply]]
    """Answers the command; one that walks the jobs held is a coroutine function."""
    data: Validator
    """Checks the command's ``control_data``."""


def _schema(name: str, schema: Mapping[str, Any]) -> Validator:
    full = {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": name, **schema}
    return Validator("control-message", full)


def _data(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "properties": properties}


class ControlCommands:
    """Runs control commands against a :class:`ControlTarget`."""

    def __init__(
        self,
        target: ControlTarget,
        settings: Settings,
        stats: ServiceStats,
        *,
        next_runs: NextRuns | None = None,
    ) -> None:
        self._target = target
        self._settings = settings
        self._stats = stats
        self._next_runs = next_runs
        self._started = time.monotonic()
        self._internal_errors = InternalErrorLog(logger)
        cancel_all = {"const": True, "description": "Cancel every task: must be explicit."}
        level = {
            "type": ["string", "integer"],
            "minimum": 0,
            "maximum": 2**31 - 1,
            "maxLength": 32,
            "description": "A level name or number.",
        }
        limit = {"type": "integer", "minimum": 0, "maximum": 1000, "description": "Stack depth."}
        self._walking = anyio.Lock()
        """Held by a command walking the jobs: one at a time (each holds a snapshot)."""
        self.stopping = anyio.Event()
        """Set as the service begins to stop: a ``cancel`` then settles the jobs it took all
        at once, not a turn at a time, so that their outcomes are among the last the
        service hands its brokers; a walk resting between two turns goes on at once."""
        self.table: dict[str, Command] = {}
        commands: tuple[tuple[str, Callable[..., Any], dict[str, Any]], ...] = (
            ("alive", lambda data: {}, _NOTHING),
            ("running", self.running, _FILTER),
            ("cancel", self.cancel, _data(**FILTER_PROPERTIES, all=cancel_all)),
            ("workers", self.workers, _NOTHING),
            ("status", self.status, _NOTHING),
            ("main", self.main, _NOTHING),
            ("aio_tasks", self.aio_tasks, _data(limit=limit)),
            ("producers", self.producers, _NOTHING),
            ("chunks", self.chunks, _NOTHING),
            ("set_log_level", self.set_log_level, {**_data(level=level), "required": ["level"]}),
            ("metrics", self.metrics, _NOTHING),
            ("run", self.run, {"type": "object"}),
        )
        for name, handler, data in commands:
            self.table[name] = Command(handler, _schema(name, data))

    async def handle(self, command: str, data: Mapping[str, Any] | None) -> Reply:
        """Run *command* with *data*; return its reply (``{"error": ...}`` when it fails).

        A command that walks the jobs held (``running``, ``cancel``, ``status``) lets the
        event loop run every :data:`~dispatcher.server.walk_turns.WALK_TURN` s; the others
        answer at once.
        """
        entry = self.table.get(command)
        if entry is None:
            known = ", ".join(sorted(self.table))
            return {"error": f"unknown command {command!r} (commands: {known})"}
        data = {} if data is None else data
        if not entry.data.is_valid(data):
            problems = "; ".join(f"control_data.{p}" for p in entry.data.problems(data))
            return {"error": f"invalid control_data for {command}: {problems}"}
        try:
            reply = entry.handler(data)
            return await reply if inspect.isawaitable(reply) else reply
        except ControlError as exc:
            return {"error": str(exc)}
        except Exception as exc:
            self._stats.rejected["internal_error"] += 1
            self._internal_errors.report(f"control command {command}", exc)
            return {"error": f"the {command} command failed inside the service; see its log"}

    # -- the commands ----------------------------------------------------------------------

    async def running(self, data: Mapping[str, Any]) -> Reply:
        """The tasks running, queued, blocked and delayed, optionally filtered.

        Those beyond :data:`~dispatcher.server.control_shapes.MAX_LISTED_BYTES` are counted
        (``omitted``), not listed (nor described). Without a filter, the count comes from the
        number of jobs held: the reply costs what it lists, however long the backlog.
        """
        wanted = TaskFilter.from_data(data)
        listing = Listing()
        async with self._walking:
            if wanted.is_empty:
                snapshot = self._target.snapshot(MAX_LISTED_JOBS)
                turns = Turns(self.stopping)
                await list_found(listing, every_job(snapshot), turns, count_rest=False)
                accounted = len(listing.listed) + listing.omitted
                listing.omitted += max(0, snapshot.total - accounted)
            else:
                # One clock for the walk and its listing: with one each, each pause of
                # one let the other's turn run out (a pause every job on a busy loop).
                turns = Turns(self.stopping)
                found = matching_jobs(self._target.snapshot(None), wanted, turns)
                await list_found(listing, found, turns)
        return _listing(listing)

    async def cancel(self, data: Mapping[str, Any]) -> Reply:
        """Cancel the tasks matching the filter (or all, if asked explicitly or so configured).

        What was cancelled is logged at INFO. The reply lists the tasks cancelled, those
        beyond :data:`~dispatcher.server.control_shapes.MAX_LISTED_BYTES` counted
        (``omitted``).

        The tasks are taken out of the service at once (for a filter on ``args`` or
        ``kwargs``, once every job held has been looked at, a turn of the event loop at a
        time: by uuid then, wherever each job is by that time); each is then settled, a turn
        at a time (all at once when the service stops). Once the jobs are taken, the command is not
        cut short: they are settled, and the reply says so.
        """
        wanted = TaskFilter.from_data(data)
        async with self._walking:
            pick = await self._pick(data, wanted)
            listing = Listing()
            if pick is not None:
                taken = self._target.take(pick)
                with anyio.CancelScope(shield=True):
                    await settle_taken(self._target, taken, listing, self.stopping)
        count = len(listing.listed) + listing.omitted
        logger.info(
            "control cancel (%s): cancelled %d task%s%s",
            _filter_text(data),
            count,
            "" if count == 1 else "s",
            _cancelled_text(listing.listed, count),
        )
        return _listing(listing)

    async def _pick(self, data: Mapping[str, Any], wanted: TaskFilter) -> JobPick | None:
        """Which jobs a cancel takes (``None``: none matches)."""
        if data.get("all"):
            if not wanted.is_empty:
                raise ControlError("cancel: give either all or a filter, not both")
            return JobPick()
        if wanted.is_empty:
            if self._settings.service.control.cancel_without_filter == "all":
                return JobPick()
            raise ControlError(
                "cancel needs a filter: uuid, task, args or kwargs (or all: true); "
                "service.control.cancel_without_filter is 'refuse' in "
                f"{self._settings.source}"
            )
        if not wanted.needs_message:
            return JobPick(wanted.uuid, wanted.task)
        found = matching_jobs(self._target.snapshot(None), wanted, Turns(self.stopping))
        uuids = {job.uuid async for _, job in found}
        return JobPick(wanted.uuid, wanted.task, frozenset(uuids)) if uuids else None

    def workers(self, data: Mapping[str, Any]) -> Reply:
        """Each worker, keyed ``worker-N``: pid, status, age, tasks finished, current task."""
        return {f"worker-{worker['worker_id']}": worker for worker in self._target.workers()}

    def main(self, data: Mapping[str, Any]) -> Reply:
        """Counters of the main process and of the pool."""
        stats = self._stats
        finished = stats.finished
        return {
            "received_count": stats.received_tasks,
            "control_count": stats.control,
            "pid": os.getpid(),
            "pool": {
                "finished_count": sum(
                    n for o, n in finished.items() if o not in CANCELLED_OUTCOMES
                ),
                "canceled_count": sum(n for o, n in finished.items() if o in CANCELLED_OUTCOMES),
                "retirement_count": stats.workers_retired,
                **self._target.pool(),
            },
            "uptime": self._uptime(),
        }

    def aio_tasks(self, data: Mapping[str, Any]) -> Reply:
        """The main process's asyncio tasks: whether each is done, and its stack."""
        return self._target.aio_tasks(data.get("limit", 6))

    def status(self, data: Mapping[str, Any]) -> Reply:
        """Every read-only command's reply, and our counters beside them.

        Also the version of dispatcher the service runs (``version``), as
        ``dispatcher-standalone --version`` says it.
        """
        stats = self._stats
        counts = self._target.counts()
        waiting = counts["queued"] + counts["blocked"] + counts["delayed"]
        limit = None if waiting <= STATUS_WAITING_LIMIT else 0
        listing = Listing()
        for where, jobs in self._target.snapshot(limit).places:  # at most 100 waiting
            for job in jobs:
                listing.add_job(where, job)
        omitted = 0 if limit is None else waiting
        return {
            "version": installed_version(),  # first: people read it at the top
            "running": listing.listed,
            "aio_tasks": self._target.aio_tasks(6),
            "workers": self.workers({}),
            "producers": self.producers({}),
            "metrics": self.metrics({}),
            "main": self.main({}),
            "chunks": self.chunks({}),
            "running_omitted": omitted + listing.omitted,
            "pid": os.getpid(),
            "uptime": self._uptime(),
            "received": stats.received_tasks,
            "received_control": stats.received_control,
            "rejected": dict(stats.rejected),
            "finished": dict(stats.finished),
            "discarded": stats.discarded,
            "log_lines_dropped": log_lines_dropped(),
            "queued": counts["queued"],
            "blocked": counts["blocked"],
            "delayed": counts["delayed"],
            "pool": {
                **counts["workers"],
                "started": stats.workers_started,
                "lost": stats.workers_lost,
            },
            "brokers": {name: health.as_reply() for name, health in sorted(stats.brokers.items())},
            "listener": {
                "connects": stats.listener_connects,
                "failures": stats.listener_failures,
                "self_checks": stats.self_checks,
            },
            **self._pg_queue_health(),
            "signatures": self._target.signatures(),
            "recent_failures": [failure.as_reply() for failure in reversed(stats.recent_failures)],
        }

    def _pg_queue_health(self) -> Reply:
        """``{"pg_queue": ...}``: its connections and claims, when the service has one."""
        if self._settings.brokers.pg_queue is None:
            return {}
        stats = self._stats
        return {
            "pg_queue": {
                "connects": stats.pg_queue_connects,
                "connect_failures": stats.pg_queue_connect_failures,
                "claim_failures": stats.pg_queue_claim_failures,
                "claiming": stats.pg_queue_failing_since is None,
                "failing_since": stats.pg_queue_failing_since,
                "last_error": stats.pg_queue_last_error,
                "last_error_time": stats.pg_queue_last_error_time,
            }
        }

    def producers(self, data: Mapping[str, Any]) -> Reply:
        """What feeds the service tasks: each broker, the schedules, on-start tasks, ``run``."""
        return producers_reply(self._settings, self._stats, self._uptime(), self._next_runs)

    def chunks(self, data: Mapping[str, Any]) -> Reply:
        """Incomplete chunked messages being assembled, and what became of the others."""
        return self._target.chunks()

    def metrics(self, data: Mapping[str, Any]) -> Reply:
        """Whether the metrics endpoint is on, and where."""
        return self._target.metrics_endpoint()

    def set_log_level(self, data: Mapping[str, Any]) -> Reply:
        """Change the level of the service's ``dispatcher`` loggers (a name, or a number)."""
        asked = data["level"]
        if isinstance(asked, str):
            number = logging.getLevelNamesMapping().get(asked.strip().upper())
            if number is None:
                known = ", ".join(logging.getLevelNamesMapping())
                raise ControlError(
                    f"invalid control_data for set_log_level: control_data.level: unknown "
                    f"log level {asked!r} (expected a number or one of {known})"
                )
        else:
            number = int(asked)
        target = get_logger("dispatcher")
        previous = logging.getLevelName(target.getEffectiveLevel())
        target.setLevel(number)
        level = logging.getLevelName(number)
        logger.log(
            max(logging.INFO, number),  # seen even when the new level hides INFO
            "control set_log_level: the dispatcher loggers' level is now %s (was %s)",
            level,
            previous,
        )
        return {"logger": "dispatcher", "level": level, "previous_level": previous}

    def run(self, data: Mapping[str, Any]) -> Reply:
        """Start a task: *data* is a task message; the reply acknowledges it (``ack``)."""
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
        logger.info("control run: submitted task %s (uuid %s)", data.get("task"), uuid)
        return {"ack": {**data, "uuid": uuid}, "uuid": uuid}

    def _uptime(self) -> float:
        return round(time.monotonic() - self._started, 3)


CANCELLED_SHOWN: Final = 3
"""Cancelled tasks a ``cancel`` log line names (the others are counted)."""


def _listing(listing: Listing) -> Reply:
    """A ``running``/``cancel`` reply: the tasks listed, and ``omitted`` when some are not.

    (Only then: dispatcherd's readers take every value of the reply but ``node_id`` for a
    task.)
    """
    if listing.omitted:
        return {**listing.listed, "omitted": listing.omitted}
    return listing.listed


def _filter_text(data: Mapping[str, Any]) -> Phrase:
    """The filter of a ``cancel`` command, for its log line."""
    if data.get("all"):
        return Phrase("all")
    keys = [key for key in ("uuid", "task", "args", "kwargs") if key in data]
    shown = [Phrase(f"{key}=%s", repr(data[key])) for key in keys]
    return Phrase.joined(", ", shown) if shown else Phrase("no filter")


def _cancelled_text(listed: Mapping[str, Mapping[str, Any]], count: int) -> Phrase:
    """The first tasks a ``cancel`` command cancelled (of *count*), for its log line."""
    if not count:
        return Phrase("")
    shown = list(listed.values())[:CANCELLED_SHOWN]
    named = Phrase.joined(
        ", ",
        (
            Phrase("%s (uuid %s, %s)", entry.get("task"), entry["uuid"], entry["where"])
            for entry in shown
        ),
    )
    more = ", ..." if count > len(shown) else ""
    return Phrase(": " + named.text + more, *named.args)

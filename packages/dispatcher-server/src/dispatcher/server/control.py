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
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import anyio

from dispatcher.config import Settings
from dispatcher.schema import Validator
from dispatcher.server.control_cancel_log import cancelled_text, filter_text
from dispatcher.server.control_shapes import (
    FILTER_PROPERTIES,
    MAX_LISTED_JOBS,
    Listing,
    NextRuns,
    Reply,
    TaskFilter,
)
from dispatcher.server.control_state import StateReplies
from dispatcher.server.control_target import ControlTarget
from dispatcher.server.control_walks import every_job, list_found, matching_jobs, settle_taken
from dispatcher.server.jobs import JobPick
from dispatcher.server.log_records import get_logger
from dispatcher.server.ratelimit import InternalErrorLog
from dispatcher.server.rejection import Rejected
from dispatcher.server.stats import ServiceStats
from dispatcher.server.walk_turns import Turns

logger = get_logger("dispatcher.control")

WALKING_COMMANDS: Final = frozenset({"running", "cancel", "status"})
"""The commands that look at every task held, one at a time (the others answer at once)."""

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
        self._internal_errors = InternalErrorLog(logger)
        state = StateReplies(target, settings, stats, next_runs)
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
            ("workers", state.workers, _NOTHING),
            ("status", state.status, _NOTHING),
            ("main", state.main, _NOTHING),
            ("aio_tasks", state.aio_tasks, _data(limit=limit)),
            ("producers", state.producers, _NOTHING),
            ("chunks", state.chunks, _NOTHING),
            ("set_log_level", self.set_log_level, {**_data(level=level), "required": ["level"]}),
            ("metrics", state.metrics, _NOTHING),
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
            filter_text(data),
            count,
            "" if count == 1 else "s",
            cancelled_text(listing.listed, count),
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


def _listing(listing: Listing) -> Reply:
    """A ``running``/``cancel`` reply: the tasks listed, and ``omitted`` when some are not.

    (Only then: dispatcherd's readers take every value of the reply but ``node_id`` for a
    task.)
    """
    if listing.omitted:
        return {**listing.listed, "omitted": listing.omitted}
    return listing.listed

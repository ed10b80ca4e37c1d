"""Control replies in dispatcherd's shapes, so that its clients read them.

``running`` and ``cancel`` answer with one key per task found, named after where it is:
``worker-N`` (running on worker N), ``queued-I``, ``blocked-I`` and ``delayed-I`` (I counts
from 0 in each place). The value is the task's message, with its ``uuid`` (filled in when the
message had none) and one key of ours, ``where``: ``worker-N``, ``worker-N next`` (held ahead
by busy worker N, not started: listed as ``queued-I``), ``queued``, ``blocked`` or
``delayed``.

A reply lists tasks up to :data:`MAX_LISTED_BYTES` of JSON: one that would list more counts
the others (``omitted``), so that it stays a reply a client can take. The ones counted are
not described: making a reply costs what it shows, not what the service holds.

The filter is dispatcherd's too: ``uuid``, ``task``, ``args`` and ``kwargs``, each compared
for equality with the message's value; an empty or null value filters nothing.

``producers`` answers with one key per producer, named as dispatcherd names them
(``pg_notify-producer``, ``scheduled-producer``, ...).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from dispatcher.config import Settings
from dispatcher.schema import MAX_MESSAGE_BYTES
from dispatcher.server.jobs import Job, describe
from dispatcher.server.stats import ServiceStats

Reply = dict[str, Any]
"""A control command's reply (a JSON object)."""

MAX_LISTED_BYTES: Final = MAX_MESSAGE_BYTES // 2
"""JSON bytes of the tasks one reply lists at most (``running``, ``cancel``, and ``status``
under ``running``); the others are counted, not listed. A reply over
:data:`~dispatcher.schema.MAX_MESSAGE_BYTES` would reach no one: no client takes it. Half of
it leaves room for the rest of a ``status`` reply."""

_ENTRY_OVERHEAD: Final = 32
"""JSON bytes a listed task costs beyond its message: its key (``queued-12345``), quotes,
colon, comma."""

FILTER_KEYS: Final = ("uuid", "task", "args", "kwargs")
"""The keys of a task filter, as dispatcherd reads them."""

FILTER_PROPERTIES: Final[dict[str, Any]] = {
    "uuid": {
        "type": ["string", "null"],
        "description": "Only the task with this uuid; empty or null: any.",
    },
    "task": {
        "type": ["string", "null"],
        "description": "Only tasks with this name; empty or null: any.",
    },
    "args": {
        "type": ["array", "null"],
        "description": "Only tasks whose message has exactly these args; empty or null: any.",
    },
    "kwargs": {
        "type": ["object", "null"],
        "description": "Only tasks whose message has exactly these kwargs; empty or null: any.",
    },
}
"""JSON Schema properties of a task filter in ``control_data``."""

NextRuns = Callable[[str], list[str]]
"""The next run times of a ``producers.scheduled`` task, in ISO 8601 with an offset."""


@dataclass(frozen=True)
class TaskFilter:
    """Which tasks ``running`` and ``cancel`` concern (``None``: any value)."""

    uuid: str | None = None
    task: str | None = None
    args: list[Any] | None = None
    kwargs: dict[str, Any] | None = None

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> TaskFilter:
        """Read the filter from valid ``control_data``; empty values filter nothing."""
        return cls(*(data.get(key) or None for key in FILTER_KEYS))

    @property
    def is_empty(self) -> bool:
        """Tell whether the filter lets every task through."""
        return all(getattr(self, key) is None for key in FILTER_KEYS)

    @property
    def needs_message(self) -> bool:
        """Tell whether the filter looks at the message itself (``args``, ``kwargs``)."""
        return self.args is not None or self.kwargs is not None

    def matches(self, entry: Mapping[str, Any]) -> bool:
        """Tell whether a described job (``where``, ``uuid``, ``task``, ``message``) passes."""
        message: Mapping[str, Any] = entry["message"]
        return (
            (self.uuid is None or entry["uuid"] == self.uuid)
            and (self.task is None or entry["task"] == self.task)
            and (self.args is None or message.get("args") == self.args)
            and (self.kwargs is None or message.get("kwargs") == self.kwargs)
        )


def slot(where: str, counters: Counter[str]) -> str:
    """The reply key of a job found at *where*; *counters* numbers each holding place."""
    if where.startswith("worker-") and not where.endswith(" next"):
        return where
    place = "queued" if where.startswith("worker-") else where
    key = f"{place}-{counters[place]}"
    counters[place] += 1
    return key


class Listing:
    """A ``running``/``cancel`` listing being made: jobs listed while they fit, then counted.

    The jobs are listed in order while their JSON stays within *max_bytes*; the ones after
    are only counted (``omitted``), not described: a listing costs no more than what a reply
    can show, however many jobs it counts.
    """

    def __init__(self, max_bytes: int = MAX_LISTED_BYTES) -> None:
        self.listed: dict[str, Any] = {}
        """The jobs listed, keyed as :func:`slot` keys them."""
        self.omitted = 0
        """The jobs counted but not listed."""
        self._max_bytes = max_bytes
        self._size = 0
        self._counters: Counter[str] = Counter()

    @property
    def full(self) -> bool:
        """Tell whether it lists no more jobs (the next ones are only counted)."""
        return self.omitted > 0

    def add(self, entry: Mapping[str, Any]) -> None:
        """List a described job (``where``, ``uuid``, ``task``, ``message``), or count it."""
        if self.omitted:
            self.omitted += 1
            return
        value = {**entry["message"], "uuid": entry["uuid"], "where": entry["where"]}
        self._size += len(json.dumps(value, separators=(",", ":"), default=str))
        self._size += _ENTRY_OVERHEAD
        if self._size > self._max_bytes:
            self.omitted = 1
            return
        self.listed[slot(entry["where"], self._counters)] = value

    def add_job(self, where: str, job: Job) -> None:
        """List *job*, found at *where*, or only count it once the listing is full."""
        if self.omitted:
            self.omitted += 1
        else:
            self.add(describe(job, where))


MAX_LISTED_JOBS: Final = MAX_LISTED_BYTES // 60
"""Jobs one listing could hold at most: each costs :data:`_ENTRY_OVERHEAD` and at least 28
bytes of JSON (``{"uuid":"","where":"queued"}``). Looking at more cannot change a reply."""


def producers_reply(
    settings: Settings, stats: ServiceStats, uptime: float, next_runs: NextRuns | None = None
) -> dict[str, Any]:
    """The ``producers`` reply: each broker, the schedules, the on-start tasks, ``run``.

    Each has dispatcherd's ``produced_count`` and ``uptime_seconds``; the pg_notify
    listener adds its reconnections (``recycle_count``) and self-checks; our own keys say
    what each one runs. A broker's ``produced_count`` is the number of payloads it handed
    to the service (:attr:`ServiceStats.delivered`); the schedules, on-start tasks and
    ``run`` are not counted (``None``). Each schedule shows its ``schedule``, its
    ``timezone`` (cron expressions) and, given *next_runs*, its ``next_runs``.
    """
    producers = settings.producers

    def producer(count: int | None = None, **extra: Any) -> dict[str, Any]:
        return {"produced_count": count, "uptime_seconds": uptime, **extra}

    reply = {f"{name}-producer": producer(stats.delivered[name]) for name in settings.brokers.names}
    if "pg_notify-producer" in reply:
        reply["pg_notify-producer"].update(
            recycle_count=max(0, stats.listener_connects - 1),
            broker_self_check={
                "enabled": True,
                "success_count": stats.self_checks,
                # dispatcherd's two timings; None before the first check, as there
                "average_time_seconds": (
                    stats.self_check_seconds / stats.self_checks if stats.self_checks else None
                ),
                "max_time_seconds": stats.self_check_max_seconds if stats.self_checks else None,
            },
            connects=stats.listener_connects,
            failures=stats.listener_failures,
        )
    if producers.scheduled:
        schedules: dict[str, dict[str, Any]] = {}
        for task, entry in producers.scheduled.items():
            schedule = schedules[task] = {"schedule": entry.schedule}
            if entry.is_cron:
                schedule["timezone"] = entry.timezone
            if next_runs is not None:
                schedule["next_runs"] = next_runs(task)
        reply["scheduled-producer"] = producer(schedules=schedules)
    if producers.on_start:
        reply["on-start-producer"] = producer(tasks=sorted(producers.on_start))
    if producers.control:
        reply["control-producer"] = producer()
    return reply

"""Checks of ``producers.scheduled`` entries that the schema cannot make.

A ``schedule`` is a number of seconds or a cron expression; a ``timezone`` goes with a cron
expression only and must name an IANA time zone. The cron syntax is checked with croniter
when it is installed (``pip install 'dispatcher-server[cron]'``); without it only the shape
(5 or 6 fields, or an ``@`` alias) is checked here, and the service refuses to start.
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from dispatcher.schema import Problem

CRON_ALIASES: Final = frozenset(
    {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
)
"""The ``@`` shorthands a cron ``schedule`` may be (``@reboot`` is not one: see on_start)."""

CRON_FIELD_COUNTS: Final = (5, 6)
"""Minute, hour, day of month, month, day of week; and optionally seconds, last."""

CRON_EXTRA: Final = "dispatcher-server[cron]"
"""What to install for cron schedules."""

_FIELD_SEPARATOR: Final = re.compile(r"[ \t]+")
_HASHED_OR_RANDOM: Final = re.compile(r"[hr](\(\d+-\d+\))?(/\d+)?", re.IGNORECASE)
_BRACKETED_EXPRESSION: Final = re.compile(r"^\[[^\]]*\]\s*")
_SOME_TIME: Final = datetime(2000, 1, 1, tzinfo=UTC)


def cron_fields(expression: str) -> list[str]:
    """The fields of a cron *expression* (an ``@`` alias is one field)."""
    return _FIELD_SEPARATOR.split(expression.strip())


def cron_problem(expression: str) -> str | None:
    """Why *expression* is not a cron schedule the service runs, or ``None`` if it is.

    The reason starts with ``not a cron expression``.
    """
    fields = cron_fields(expression)
    what = f"not a cron expression: {expression!r}"
    if len(fields) == 1 and fields[0].startswith("@"):
        if fields[0].lower() in CRON_ALIASES:
            return None
        reason = f"{what}: unknown alias (expected one of {', '.join(sorted(CRON_ALIASES))})"
        if fields[0].lower() == "@reboot":
            reason += "; to run a task when the service starts, list it in producers.on_start"
        return reason
    if len(fields) not in CRON_FIELD_COUNTS:
        return (
            f"{what}: {len(fields)} fields; expected 5 (minute hour day-of-month month "
            "day-of-week) or 6 (the same, then seconds)"
        )
    if any(_HASHED_OR_RANDOM.fullmatch(field) for field in fields):
        return f"{what}: hashed and random values (H, R) are not supported"
    return _croniter_problem(expression, what)


def _croniter_problem(expression: str, what: str) -> str | None:
    """What croniter finds wrong with *expression*, when croniter is installed."""
    try:
        from croniter import (  # type: ignore[import-untyped, import-not-found, unused-ignore]
            CroniterBadDateError,
            croniter,
        )
    except ImportError:
        return None
    try:
        schedule = croniter(expression.strip(), _SOME_TIME)
    except (ValueError, TypeError, KeyError, IndexError) as exc:  # croniter's own: ValueError
        reason = _BRACKETED_EXPRESSION.sub("", str(exc)).removeprefix("is ").strip()
        reason = reason.removeprefix("not acceptable, ")
        return f"{what}: {reason or 'not acceptable'}"
    try:
        schedule.get_next(float)
    except CroniterBadDateError:
        return f"{what}: no date matches it"
    return None


HOST_ZONES: Final = frozenset({"localtime", "posixrules"})
"""Names some time zone databases hold that stand for the host's own zone, not a place's."""


def timezone_problem(name: str) -> str | None:
    """Why *name* is not an IANA time zone (``Europe/Paris``, ``UTC``), or ``None``.

    The host's own zone (``localtime``) is refused: it differs from host to host.
    """
    if name in HOST_ZONES:
        return (
            f"{name!r} is whatever zone the host is set to, which differs between hosts: "
            "name the zone (e.g. 'Europe/Paris')"
        )
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        known = zoneinfo.available_timezones()
        if not known:
            return (
                f"unknown time zone {name!r}: this host has no time zone database "
                "(pip install tzdata)"
            )
        same = sorted(zone for zone in known if zone.lower() == name.strip().lower())
        if same:
            return f"unknown time zone {name!r} (did you mean {same[0]!r}?)"
        return f"unknown time zone {name!r} (expected an IANA name such as 'Europe/Paris')"
    return None


def scheduled_problems(producers: Mapping[str, Any]) -> list[Problem]:
    """Problems of the ``producers.scheduled`` entries of a schema-valid ``producers``."""
    problems: list[Problem] = []
    for task, entry in producers.get("scheduled", {}).items():
        at = ("producers", "scheduled", task)
        schedule = entry["schedule"]
        if isinstance(schedule, str):
            reason = cron_problem(schedule)
            if reason is not None:
                problems.append(Problem((*at, "schedule"), reason))
        name = entry.get("timezone")
        if name is None:
            continue
        if not isinstance(schedule, str):
            reason = "only allowed with a cron schedule (schedule is a number of seconds)"
            problems.append(Problem((*at, "timezone"), reason))
        elif (reason := timezone_problem(name)) is not None:
            problems.append(Problem((*at, "timezone"), reason))
    return problems

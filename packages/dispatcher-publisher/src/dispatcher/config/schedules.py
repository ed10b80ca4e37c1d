"""Checks of ``producers.scheduled`` entries that the schema cannot make.

A ``schedule`` is a number of seconds or a cron expression; a ``timezone`` goes with a cron
expression only and must name an IANA time zone. The cron syntax is checked with croniter
when it is installed (``pip install "dispatcher-server[cron]"``); without it only the shape
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

CRON_FIELDS: Final = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day-of-month", 1, 31),
    ("month", 1, 12),
    ("day-of-week", 0, 7),
    ("seconds", 0, 59),
)
"""Each field of a cron expression, in order: its name, its least and its greatest value
(a day of the week is 0 or 7 for Sunday)."""

_NAMES: Final = {
    "month": {
        name: number
        for number, name in enumerate(
            ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
            start=1,
        )
    },
    "day-of-week": {
        name: number
        for number, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))
    },
}
_ITEM: Final = re.compile(r"(?:\*|\?|(?P<start>\w+)(?:-(?P<end>\w+))?)(?:/(?P<step>\w+))?")
_FIELD_SEPARATOR: Final = re.compile(r"[ \t]+")
_HASHED_OR_RANDOM: Final = re.compile(r"[hr](\(\d+-\d+\))?(/\d+)?", re.IGNORECASE)
_BRACKETED_EXPRESSION: Final = re.compile(r"^\[[^\]]*\]\s*")
_SOME_TIME: Final = datetime(2000, 1, 1, tzinfo=UTC)
_QUOTED_PART: Final = re.compile(r"\s*'[^']*'")
"""A part of a croniter message quoting the expression (``Invalid day_of_week value: '9'``)."""


def cron_fields(expression: str) -> list[str]:
    """The fields of a cron *expression* (an ``@`` alias is one field)."""
    return _FIELD_SEPARATOR.split(expression.strip())


def cron_problem(expression: str) -> str | None:
    """Why *expression* is not a cron schedule the service runs, or ``None`` if it is.

    The reason starts with ``not a cron expression``.
    """
    fields = cron_fields(expression)
    what = "not a cron expression"  # the expression is not quoted: it may be a misplaced secret
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
    bound = _bounds_problem(cron_fields(expression))
    if bound is not None:
        return f"{what}: {bound}"
    try:
        schedule = croniter(expression.strip(), _SOME_TIME)
    except (ValueError, TypeError, KeyError, IndexError) as exc:  # croniter's own: ValueError
        reason = _BRACKETED_EXPRESSION.sub("", str(exc)).removeprefix("is ").strip()
        reason = _QUOTED_PART.sub("", reason).strip(" :.")
        reason = reason.removeprefix("not acceptable, ").removeprefix("not acceptable. ")
        field = _refused_field(croniter, cron_fields(expression))
        where = "" if field is None else f"{field}: "
        return f"{what}: {where}{reason or 'not acceptable'}"
    try:
        schedule.get_next(float)
    except CroniterBadDateError:
        return f"{what}: no date matches it"
    return None


def _refused_field(croniter: Any, fields: list[str]) -> str | None:
    """The name of the first field croniter refuses alone (the others ``*``), if any.

    croniter's messages quote the whole expression, which is not shown, and seldom name the
    field: this names it.
    """
    for index, text in enumerate(fields):
        alone = ["*"] * len(fields)
        alone[index] = text
        try:
            croniter(" ".join(alone), _SOME_TIME)
        except (ValueError, TypeError, KeyError, IndexError):
            return CRON_FIELDS[index][0]
    return None


def _bounds_problem(fields: list[str]) -> str | None:
    """A start or end outside its field's range, or a step that is not a positive number.

    croniter lets a bound outside the field through (it reads the day of the month ``1-0``
    as every day). A range going backwards wraps around (``22-2``: 22, 23, 0, 1 and 2;
    ``sat-sun``), and a step past the field's end keeps the start only (``*/90``: minute
    0), as croniter reads them and as configs written for earlier releases rely on. Items
    it reads otherwise (``L``, ``15W``, ``mon#2``) are left to it.
    """
    if len(fields) not in CRON_FIELD_COUNTS:
        return None
    for text, (field, least, greatest) in zip(fields, CRON_FIELDS, strict=False):
        items = text.split(",")
        for number, item in enumerate(items, 1):
            reason = _item_problem(item, field, least, greatest)
            if reason is not None:
                where = f"{field}, item {number} of {len(items)}" if len(items) > 1 else field
                return f"{where}: {reason}"
    return None


def _item_problem(item: str, field: str, least: int, greatest: int) -> str | None:
    """What is out of range in one item of a field (``5``, ``1-5``, ``*/15``, ``mon-fri/2``)."""
    matched = _ITEM.fullmatch(item)
    if matched is None:
        return None
    start, end, step = matched["start"], matched["end"], matched["step"]
    bounds = [_value(start, field), _value(end, field)]
    if (start is not None and bounds[0] is None) or (end is not None and bounds[1] is None):
        return None  # not a number nor a name: croniter's to read
    # No value is quoted (the expression may be a misplaced secret): its place is named.
    for part, value in zip(("start", "end"), bounds, strict=True):
        if value is not None and not least <= value <= greatest:
            what = "the value" if end is None else f"the {part} of the range"
            return f"{what} is out of range ({least}-{greatest})"
    if start is not None and end is not None and _one_value(bounds[0], bounds[1], field):
        # croniter reads a range of one value as the whole field (3-3 as every hour).
        return "a range of one value (such as 3-3), read as the whole field: write the value alone"
    if step is not None and not (_digits(step) and int(step)):
        return "the step (after '/') is not a positive number"
    return None


def _value(text: str | None, field: str) -> int | None:
    """The number a field's value stands for (``7``, ``mon``); ``None`` for another text."""
    if text is None:
        return None
    if _digits(text):
        return int(text)
    return _NAMES.get(field, {}).get(text.lower())


def _digits(text: str) -> bool:
    """Whether *text* is ASCII digits (``'²'.isdigit()`` is true, ``int('²')`` fails)."""
    return text.isascii() and text.isdigit()


def _one_value(start: int | None, end: int | None, field: str) -> bool:
    """Whether the range *start*-*end* holds one value (Sunday is 0 and 7: ``7-0`` too)."""
    if start is None or end is None:
        return False
    if field == "day-of-week" and {start, end} == {0, 7}:
        return start == 7  # 0-7 is the whole week; 7-0, from Sunday to Sunday, one day
    return start == end


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
            return "unknown time zone: this host has no time zone database (pip install tzdata)"
        same = sorted(zone for zone in known if zone.lower() == name.strip().lower())
        if same:
            return f"unknown time zone (did you mean {same[0]!r}?)"
        return "unknown time zone (expected an IANA name such as 'Europe/Paris')"
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

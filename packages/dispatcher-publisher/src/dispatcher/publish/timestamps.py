"""Reading ``timestamptz`` values whatever the session's ``DateStyle``, and whatever their year.

psycopg reads a ``timestamptz`` sent as text only in the ``ISO`` date style: a role or a
database set to another (``SQL, DMY``, ``German``, ``Postgres, MDY``) would fail every read
of a job. And PostgreSQL's timestamps run from 4713 BC to the year 294276, plus
``infinity`` and ``-infinity`` (an operator may park a job with ``run_after =
'infinity'``), where Python's run from the year 1 to 9999.

So the statements that read a job select each of its times through :func:`timestamp_sql`,
which writes it with an explicit pattern (``to_char``) and its offset from UTC in seconds,
both unchanged by any session setting but the time zone; :func:`read_timestamp` makes it
an aware datetime in the session's time zone, as psycopg would, or, for a time no datetime
can hold, the text PostgreSQL writes for it in the ``ISO`` date style. Nothing is set on
the session: a caller's connection is left as it was.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any, Final

import psycopg

LATEST: Final = datetime.max.replace(tzinfo=UTC)
"""What a timestamp after the year 9999 (``infinity`` included) is read as."""

EARLIEST: Final = datetime.min.replace(tzinfo=UTC)
"""What a timestamp before the year 1 (``-infinity`` included) is read as."""

_INFINITE: Final = frozenset({"infinity", "-infinity"})


def timestamp_sql(expression: str, name: str | None = None) -> str:
    """SQL selecting the ``timestamptz`` *expression* for :func:`read_timestamp`, as *name*.

    ``2026-05-17 10:00:00.123456 AD 7200``: its time in the session's time zone, its era,
    and its offset from UTC in seconds; ``infinity`` or ``-infinity``; ``NULL``.
    """
    selected = (
        f"CASE WHEN pg_catalog.isfinite({expression})"
        f" THEN pg_catalog.to_char({expression}, 'YYYY-MM-DD HH24:MI:SS.US BC')"
        f" || ' ' || extract(timezone FROM {expression})::integer::text"
        f" ELSE ({expression})::text END"
    )
    return selected if name is None else f"{selected} AS {name}"


def session_zone(connection: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> tzinfo:
    """The time zone of *connection*'s session (UTC when it cannot be told)."""
    try:
        return connection.info.timezone
    except psycopg.Error:  # closed meanwhile
        return UTC


def read_timestamp(value: object, zone: tzinfo) -> datetime | str | None:
    """A time selected by :func:`timestamp_sql`, as an aware datetime in *zone*.

    A time no datetime can hold is returned as PostgreSQL writes it in the ``ISO`` date
    style (``infinity``, ``-infinity``, ``4713-01-01 00:00:00+00 BC``, ``20000-01-01
    00:00:00+00``); ``NULL`` as ``None``.
    """
    if not isinstance(value, str):
        return None
    if value in _INFINITE:
        return value
    try:
        local, era, seconds = value.rsplit(" ", 2)
        offset = int(seconds)
    except ValueError:
        return value  # not written by timestamp_sql()
    if era == "AD":
        try:
            at = datetime.fromisoformat(local)  # a year of 5 digits or more is refused
            return at.replace(tzinfo=timezone(timedelta(seconds=offset))).astimezone(zone)
        except (ValueError, OverflowError):
            pass
    return _iso_text(local, era, offset)


def _iso_text(local: str, era: str, offset: int) -> str:
    """What PostgreSQL writes in the ``ISO`` date style for this time, era and offset."""
    whole, _, fraction = local.partition(".")
    fraction = fraction.rstrip("0")
    sign = "-" if offset < 0 else "+"
    minutes, secs = divmod(abs(offset), 60)
    hours, minutes = divmod(minutes, 60)
    zone = f"{sign}{hours:02d}"
    if minutes or secs:
        zone += f":{minutes:02d}"
    if secs:
        zone += f":{secs:02d}"
    text = whole + (f".{fraction}" if fraction else "") + zone
    return text + " BC" if era == "BC" else text


def out_of_range(text: str) -> datetime:
    """What stands for *text*, PostgreSQL's text of a timestamp no datetime can hold.

    :data:`EARLIEST` for ``-infinity`` and years BC, else :data:`LATEST`.
    """
    return EARLIEST if text.startswith("-") or text.endswith(" BC") else LATEST


def read_datetime(value: object, zone: tzinfo) -> datetime | None:
    """:func:`read_timestamp`, with a time no datetime can hold as :func:`out_of_range` says."""
    read = read_timestamp(value, zone)
    return out_of_range(read) if isinstance(read, str) else read

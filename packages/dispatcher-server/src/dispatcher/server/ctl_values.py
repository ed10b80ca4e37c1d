"""One value of a reply as people read it: a duration, a size or a date where its key says so.

JSON's words for ``true``, ``false`` and ``null``, units where the key says what a number is
(durations such as ``9.4 s`` or ``3 min 12 s``, sizes such as ``28.4 MiB``, dates in local
time), lists and objects as JSON; everything escaped.
"""

from __future__ import annotations

import json
import time
from typing import Final

from dispatcher.server.ctl_columns import shown

DURATION_KEYS: Final = frozenset(
    {
        "age",
        "current_task_age",
        "elapsed",
        "max_age",
        "seconds_since_start",
        "uptime",
        "uptime_seconds",
    }
)
"""Keys whose numbers are seconds."""

SIZE_KEYS: Final = frozenset({"rss_bytes", "active_bytes"})
"""Keys whose numbers are bytes."""

TIME_KEYS: Final = frozenset({"time", "time_pub"})
"""Keys whose numbers are dates, in seconds since the epoch (shown in local time)."""


def value_text(value: object, key: str | None = None) -> str:
    """One value as people read it.

    JSON's words for ``true``, ``false`` and ``null``; a duration or a size when *key* says
    the number is one; lists and objects as JSON; everything escaped.
    """
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int | float) and key is not None:
        if key in DURATION_KEYS:
            return duration_text(value)
        if key in SIZE_KEYS:
            return size_text(value)
        if key in TIME_KEYS:
            return date_text(value)
    if isinstance(value, list | dict):
        return shown(json.dumps(value, sort_keys=True, ensure_ascii=False, default=str))
    return shown(value)


MAX_WHOLE_DAYS: Final = 99_999
"""Longest duration, in days, written in whole days; beyond, in days with 3 digits
(``1.16e+295 d``): a reply may hold any number."""


def duration_text(seconds: float) -> str:
    """*seconds* for people: ``250 ms``, ``9.4 s``, ``42 s``, ``3 min 5 s``, ``2 h 10 min``."""
    if seconds < 0:
        return f"-{duration_text(-seconds)}"
    if seconds >= MAX_WHOLE_DAYS * 86400:
        return f"{seconds / 86400:.3g} d"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    minutes, secs = divmod(whole, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days} d {hours} h" if hours else f"{days} d"
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    if minutes:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    return f"{secs} s"


def date_text(seconds: float) -> str:
    """*seconds* since the epoch as a local date and time, ``2026-11-29 16:15:48``.

    A number no clock can show (a reply may hold any) is shown as it is.
    """
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))
    except (OverflowError, OSError, ValueError):
        return f"{seconds:g}"


SIZE_UNITS: Final = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
"""Binary units of :func:`size_text`, beyond bytes."""


def size_text(size: float) -> str:
    """*size* bytes for people: ``512 B``, ``12.0 KiB``, ``28.4 MiB``, ``1.50 GiB``.

    A size beyond the units (a reply may hold any number) keeps 3 digits: ``8.67e+279 EiB``.
    """
    if size < 0:
        return f"-{size_text(-size)}"
    if size < 1024:
        return f"{size:.0f} B"
    for power, unit in enumerate(SIZE_UNITS, start=1):
        scaled = size / 1024**power
        if scaled < 1024 or unit == SIZE_UNITS[-1]:
            break
    if scaled >= 1024:
        return f"{scaled:.3g} {unit}"
    return f"{scaled:.2f} {unit}" if power >= 3 else f"{scaled:.1f} {unit}"

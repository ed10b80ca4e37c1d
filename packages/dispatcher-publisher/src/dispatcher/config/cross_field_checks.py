"""Rules of a config that span several keys, which the schema cannot state.

``min_workers`` at most ``max_workers``, a conninfo libpq can read, ``brokers.pg_queue``'s
conninfo and queues, the schedules, the default brokers of ``publish`` among those configured.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from dispatcher.config.conninfo import conninfo_text_problem
from dispatcher.config.schedules import scheduled_problems
from dispatcher.schema import Problem


def cross_field_problems(document: Mapping[str, Any]) -> list[Problem]:
    """Rules that span several keys, which the schema cannot state."""
    problems: list[Problem] = []
    pool = document.get("service", {}).get("pool", {})
    min_workers, max_workers = pool.get("min_workers", 1), pool.get("max_workers")
    if max_workers is not None and min_workers > max_workers:
        problems.append(Problem(("service", "pool", "min_workers"), "must be at most max_workers"))
    problems += _pg_queue_problems(document.get("brokers", {}))
    for broker in ("pg_notify", "pg_queue"):
        conninfo = (document.get("brokers", {}).get(broker) or {}).get("conninfo")
        if isinstance(conninfo, str) and (reason := conninfo_problem(conninfo)) is not None:
            problems.append(Problem(("brokers", broker, "conninfo"), reason))
    problems += scheduled_problems(document.get("producers", {}))
    configured = sorted(document.get("brokers", {}))
    for key, value in document.get("publish", {}).items():
        if value not in configured:
            listed = f"configured: {', '.join(configured)}" if configured else "none is"
            reason = f"names a broker not configured under 'brokers' ({listed})"
            problems.append(Problem(("publish", key), reason))
    return problems


def conninfo_problem(conninfo: str) -> str | None:
    """Why libpq cannot read *conninfo*, without quoting it (it may hold a password)."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    unreadable = conninfo_text_problem(conninfo)
    if unreadable is not None:
        return unreadable
    try:
        given = conninfo_to_dict(conninfo)
    except ProgrammingError as exc:
        said = str(exc).strip()
        if not said.startswith(("invalid connection option", "invalid URI query parameter")):
            # The token may be (part of) the password; a one-character one ("=") is kept.
            said = _QUOTED.sub(lambda m: m[0] if len(m[0]) <= 3 else '"..."', said)
        return f"not a valid connection string: {said}"
    for key, values in _ENUMERATED.items():
        value = given.get(key)
        if value is not None and str(value) not in values:
            return f"{key}: expected one of {', '.join(values)}"
    return None


_ENUMERATED: Final = {
    "sslmode": ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
    "gssencmode": ("disable", "prefer", "require"),
    "channel_binding": ("disable", "prefer", "require"),
    "target_session_attrs": (
        "any", "read-write", "read-only", "primary", "standby", "prefer-standby",
    ),
}  # fmt: skip
"""The libpq parameters whose values libpq checks only when it connects (then every attempt
fails the same way, for ever): checked here, where the config is read."""

_QUOTED: Final = re.compile(r'"[^"]*"')
"""A token libpq quotes in its complaint."""


def _pg_queue_problems(brokers: Mapping[str, Any]) -> list[Problem]:
    """``brokers.pg_queue`` needs a conninfo, and its queues may not be NOTIFY channels too."""
    section, pg_notify = brokers.get("pg_queue"), brokers.get("pg_notify")
    if section is None:
        return []
    problems: list[Problem] = []
    if "conninfo" not in section and pg_notify is None:
        problems.append(
            Problem(
                ("brokers", "pg_queue", "conninfo"),
                "required: set it, or configure brokers.pg_notify, whose conninfo it defaults to",
            )
        )
    channels = [] if pg_notify is None else list(pg_notify.get("channels", []))
    listed = set(channels)  # (thousands of each: no list searched for each queue)
    for index, queue in enumerate(section["queues"]):
        if queue in listed:
            problems.append(
                Problem(
                    ("brokers", "pg_queue", "queues", index),
                    "also a pg_notify channel (brokers.pg_notify.channels"
                    f"[{channels.index(queue)}]); a queue is durable or not, list it in one only",
                )
            )
    return problems

"""Whether a task or control message agrees with the columns of the row it was stored in.

A durable broker (``pg_queue``) stores each message in a row: listings, ``get_job()`` and a
cancel by uuid go by the row's columns, and the table applies the delay and on_duplicate.
A message that says otherwise than its row is refused.
"""

from __future__ import annotations

from typing import Any, Final

from dispatcher.server.origin import StoredRow
from dispatcher.server.rejection import Rejected

DELAY_SLACK: Final = 1.0
"""Seconds a row's delay (``run_after - created_at``) may fall short of its message's.

The two columns may be stamped by different clocks: ``created_at`` by a client's clock
(an application that writes it) and ``run_after`` by the database's (its default, ``now()``),
or ``created_at`` by ``clock_timestamp()`` after ``run_after`` by ``now()``, the start of
the inserting transaction. A row short by more holds a delay other than its message's."""


def task_agrees_with_row(message: dict[str, Any], row: StoredRow) -> None:
    """Refuse a task message whose uuid, task, delay or on_duplicate its row does not hold.

    A message naming another uuid or task (a row written by hand) would run as something
    listings and a cancel by uuid cannot find; one asking for a delay or an on_duplicate its
    row does not apply would run early, or beside its twin, silently.
    """
    uuid, task = row.uuid, row.task
    for key, stored in (("task", task), ("uuid", uuid)):
        if message[key] != stored:
            raise Rejected(
                "invalid_message",
                f"{key}: the message's {message[key]!r} is not the {stored!r} its row was "
                f"stored under (the row's {key} column)",
                uuid,
            )
    _delay_and_mode_agree_with_row(message, row)


def _delay_and_mode_agree_with_row(message: dict[str, Any], row: StoredRow) -> None:
    """Refuse a task message whose delay or on_duplicate its row does not apply.

    A message without a delay (or with a delay of 0) agrees with any row; one with a delay
    agrees with a row whose delay falls short of it by at most :data:`DELAY_SLACK`.
    """
    mode = message.get("on_duplicate")
    if mode == "parallel":
        mode = None
    if mode != row.on_duplicate:
        raise Rejected(
            "invalid_message",
            f"on_duplicate: the message's {message.get('on_duplicate', 'parallel')!r} is not "
            f"the row's {row.on_duplicate or 'parallel'!r} (the row's on_duplicate and dup_key "
            "columns enforce it: NULL for parallel)",
            row.uuid,
        )
    delay = message.get("delay") or 0
    if not delay or row.delay is None or delay <= row.delay + DELAY_SLACK:
        return
    if round(row.delay, 6) >= 0:
        stored = f"only {_seconds(row.delay)} seconds after"
    else:
        stored = f"{_seconds(-row.delay)} seconds before"
    raise Rejected(
        "invalid_message",
        f"delay: the message asks for a delay of {_seconds(delay)} seconds, but its row's "
        f"run_after is {stored} its created_at: store run_after = created_at + delay (the "
        f"row may fall short by up to {DELAY_SLACK:g} s, for clocks that differ)",
        row.uuid,
    )


def _seconds(value: float) -> str:
    """*value* to the microsecond, without trailing zeros: ``20``, ``0.000715``."""
    return f"{value:.6f}".rstrip("0").rstrip(".")


def control_agrees_with_row(message: dict[str, Any], row: StoredRow) -> None:
    """Refuse a control message stored under a task column other than ``control:<command>``.

    Listings go by the task column: one naming a task would show the command's outcome as
    that task's.
    """
    expected = f"control:{message['control']}"
    if row.task != expected:
        raise Rejected(
            "invalid_message",
            f"task: a control message is stored under {row.task!r}, where its row's task "
            f"column must be {expected!r}",
            row.uuid,
        )

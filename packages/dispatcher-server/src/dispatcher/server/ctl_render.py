"""How ``dispatcherctl`` shows replies to people: one block per service, tables of entries.

Values are shown as JSON writes them (``true``, ``false``, ``null``), with units where the
key says what a number is (durations such as ``9.4 s`` or ``3 min 12 s``, sizes such as
``28.4 MiB``: see :mod:`~dispatcher.server.ctl_values`); nested objects as indented blocks,
lists of objects as tables.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any, Final

from dispatcher.control import ControlResult
from dispatcher.server.ctl_columns import aligned, cut, shown
from dispatcher.server.ctl_values import value_text
from dispatcher.server.log_text import escape

COLUMNS: dict[str, tuple[str, ...]] = {
    "running": ("slot", "where", "uuid", "task", "elapsed", "args", "kwargs"),
    "cancel": ("slot", "where", "uuid", "task", "args", "kwargs"),
    "workers": (
        "worker_id",
        "pid",
        "state",
        "age",
        "finished_count",
        "current_task",
        "current_task_uuid",
        "current_task_age",
        "rss_bytes",
    ),
    "aio_tasks": ("task", "done"),
}
"""The columns shown for the replies with one key per task, worker or asyncio task (the
first column is that key, unless it is one of the entries' own fields). Tasks show
``where`` only when it says more than their ``slot`` (a task waiting for a worker: ``worker-2
next``); ``--json`` has it always. Workers show our
``state`` (``busy`` while running a task), not dispatcherd's ``status`` (``ready`` then),
except for a reply without ``state`` (a dispatcherd service's): its ``status``. A column
no entry has a value for is left out."""

DURATION_GROUPS: Final = frozenset({"top5", "near_worker_ct"})
"""Keys of objects whose numbers are seconds (``main.pool.usage``'s)."""

ARGUMENTS_WIDTH: Final = 40
"""Columns of a task's ``args`` or ``kwargs`` shown in a table (a longer one is cut, ``…``)."""


def render(result: ControlResult, now: float | None = None) -> str:
    """Replies as text for people: one block per service.

    ``running``, ``cancel``, ``workers`` and ``aio_tasks`` replies (and those parts of
    ``status``) are shown as tables, one row per task, worker or asyncio task; ``--json``
    shows everything. A task's ``elapsed`` (see :func:`add_elapsed`) is shown when it is
    there; in ``status``, it is worked out from the reply itself. Every value is shown
    escaped (see :func:`dispatcher.server.log_text.escape`): a reply cannot start a line of
    its own in the terminal, or send it control sequences.
    """
    lines = []
    for reply in sorted(result.replies, key=lambda r: str(r.get("node_id"))):
        body = {k: v for k, v in reply.items() if k != "node_id"}
        lines.append(f"{shown(reply.get('node_id', '?'))}:")
        if result.command == "status" and isinstance(body.get("running"), dict):
            ages = task_ages(body.get("workers"))
            body["running"] = add_elapsed(body["running"], ages, now)
        if result.command in COLUMNS and "error" not in body:
            lines += _entries(body, COLUMNS[result.command], indent="  ")
        elif not body:
            lines.append("  ok")
        else:
            lines += _fields(body, indent="  ")
    return "".join(line + "\n" for line in lines)


def add_elapsed(
    entries: Mapping[str, Any], task_ages: Mapping[str, tuple[str, float]], now: float | None = None
) -> dict[str, Any]:
    """The entries of a ``running`` reply, each with ``elapsed`` seconds, when known.

    A task on a worker (keyed ``worker-N``): how long it has run, from that worker's entry
    in *task_ages* (from the ``workers`` reply's ``current_task_age``) when it runs the same
    uuid; so that two copies of one job (on two workers) each show their own start.
    Otherwise, or when that is unknown, how long since it was submitted (its message's
    ``time_pub``, by the publisher's clock).
    """
    now = time.time() if now is None else now
    shown_entries: dict[str, Any] = {}
    for key, entry in entries.items():
        if isinstance(entry, dict):
            elapsed = None
            on_worker = task_ages.get(key)
            if on_worker is not None and on_worker[0] == entry.get("uuid"):
                elapsed = on_worker[1]
            published = entry.get("time_pub")
            if elapsed is None and isinstance(published, int | float) and published > 0:
                elapsed = max(0.0, now - published)
            if elapsed is not None:
                entry = {**entry, "elapsed": elapsed}
        shown_entries[key] = entry
    return shown_entries


def task_ages(workers: object) -> dict[str, tuple[str, float]]:
    """Each worker's task uuid and how long it has run, by worker, from a ``workers`` reply."""
    if not isinstance(workers, Mapping):
        return {}
    ages = {}
    for key, worker in workers.items():
        if isinstance(worker, Mapping):
            uuid, age = worker.get("current_task_uuid"), worker.get("current_task_age")
            if isinstance(uuid, str) and isinstance(age, int | float):
                ages[str(key)] = (uuid, float(age))
    return ages


def _fields(body: Mapping[str, Any], indent: str, group: str | None = None) -> list[str]:
    lines = []
    for key, value in body.items():
        title = f"{indent}{shown(key)}:"
        if key in COLUMNS and isinstance(value, dict):
            lines.append(title)
            lines += _entries(value, COLUMNS[key], indent=indent + "  ")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            lines.append(title)
            columns = list(dict.fromkeys(c for row in value for c in row))
            lines += _table(columns, value, indent=indent + "  ")
        elif isinstance(value, dict) and value:
            lines.append(title)
            lines += _fields(value, indent + "  ", group=key)
        elif isinstance(value, dict | list) and not value:
            lines.append(f"{title} (none)")
        else:
            unit_key = "elapsed" if group in DURATION_GROUPS else key
            lines.append(f"{title} {value_text(value, unit_key)}")
    return lines


UNKNOWN_SHAPE: Final = (
    "(not in the shape this dispatcherctl knows: from a service of another version?"
    " shown as it came)"
)
"""Said before the parts of a table reply that are not entries (objects), shown as fields."""


def _entries(body: Mapping[str, Any], columns: tuple[str, ...], indent: str) -> list[str]:
    """A table of a reply's entries (one per key), its first column being the key.

    Tasks the reply leaves out (its ``omitted``, a count) are said after the table.
    Whatever else the reply holds (a list, from a service of another version) is never
    dropped: it is shown as fields after a line saying so.
    """
    entries = {key: value for key, value in body.items() if isinstance(value, dict)}
    others = {key: value for key, value in body.items() if not isinstance(value, dict)}
    omitted = others.get("omitted")
    if type(omitted) is int:  # the tasks the reply leaves out (else: shown as it came)
        del others["omitted"]
    else:
        omitted = 0
    if others:
        table = _entries(entries, columns, indent) if entries else []
        return [*table, f"{indent}{UNKNOWN_SHAPE}", *_fields(others, indent)]
    more = [f"{indent}... {omitted} more, not listed (too many for one reply)"] if omitted else []
    if not entries:
        return more or [f"{indent}(none)"]
    rows = [{columns[0]: key, **value} for key, value in entries.items()]
    if "state" in columns:
        for row in rows:
            row.setdefault("state", row.get("status"))
    shown_columns = [columns[0], *(c for c in columns[1:] if any(c in row for row in rows))]
    if "where" in shown_columns and all(row.get("where") == row[columns[0]] for row in rows):
        shown_columns.remove("where")  # a task on a worker: its slot says where already
    return [*_table(shown_columns, rows, indent), *more]


def _table(columns: list[str], rows: list[dict[str, Any]], indent: str) -> list[str]:
    cells = [[_cell(row.get(c), c) for c in columns] for row in rows]
    return aligned([[shown(c) for c in columns], *cells], indent)


def _cell(value: object, key: str) -> str:
    """A table cell: ``-`` for nothing; arguments and other lists or objects cut short."""
    if value is None:
        return "-"
    if isinstance(value, list | dict):
        text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
        return cut(escape(text, ARGUMENTS_WIDTH * 2), ARGUMENTS_WIDTH)
    return value_text(value, key)

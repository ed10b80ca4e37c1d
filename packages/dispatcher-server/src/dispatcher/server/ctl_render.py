"""How ``dispatcherctl`` shows replies to people: one block per service, tables of entries."""

from __future__ import annotations

import json
from typing import Any

from dispatcher.control import ControlResult
from dispatcher.server.logsafe import escape

DISPATCHERD_NOT_FOUND = (
    "dispatcherd services cannot be found there: pass --expected-replies N to wait for N replies"
)

COLUMNS: dict[str, tuple[str, ...]] = {
    "running": ("slot", "where", "uuid", "task"),
    "cancel": ("slot", "where", "uuid", "task"),
    "workers": (
        "worker_id",
        "pid",
        "state",
        "age",
        "finished_count",
        "current_task",
        "current_task_uuid",
        "rss_bytes",
    ),
    "aio_tasks": ("task", "done"),
}
"""The columns shown for the replies with one key per task, worker or asyncio task (the
first column is that key, unless it is one of the entries' own fields). Workers show our
``state`` (``busy`` while running a task), not dispatcherd's ``status`` (``ready`` then),
except for a reply without ``state`` (a dispatcherd service's): its ``status``."""


def tally(result: ControlResult, looked_up: bool) -> str:
    """Say how many replies came, and how many were waited for and why."""
    counted = f"{len(result.replies)} of {result.expected} replies"
    if looked_up:
        return (
            f"({counted}: one per dispatcher service connected to the database; "
            "dispatcherd services are not counted: --expected-replies N waits for N)"
        )
    return f"({counted})"


def render(result: ControlResult) -> str:
    """Replies as text for people: one block per service.

    ``running``, ``cancel``, ``workers`` and ``aio_tasks`` replies (and those parts of
    ``status``) are shown as tables, one row per task, worker or asyncio task; ``--json``
    shows everything. Every value is shown escaped (see
    :func:`dispatcher.server.logsafe.escape`): a reply cannot start a line of its own in the
    terminal, or send it control sequences.
    """
    lines = []
    for reply in sorted(result.replies, key=lambda r: str(r.get("node_id"))):
        body = {k: v for k, v in reply.items() if k != "node_id"}
        lines.append(f"{shown(reply.get('node_id', '?'))}:")
        if result.command in COLUMNS and "error" not in body:
            lines += _entries(body, COLUMNS[result.command], indent="  ")
        elif not body:
            lines.append("  ok")
        else:
            lines += _fields(body, indent="  ")
    return "".join(line + "\n" for line in lines)


def _fields(body: dict[str, Any], indent: str) -> list[str]:
    lines = []
    for key, value in body.items():
        if key in COLUMNS and isinstance(value, dict):
            lines.append(f"{indent}{shown(key)}:")
            lines += _entries(value, COLUMNS[key], indent=indent + "  ")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            lines.append(f"{indent}{shown(key)}:")
            columns = [c for c in value[0] if not isinstance(value[0][c], dict | list)]
            lines += _table(columns, value, indent=indent + "  ")
        elif isinstance(value, list | dict):
            lines.append(f"{indent}{shown(key)}: {json.dumps(value, sort_keys=True)}")
        else:
            lines.append(f"{indent}{shown(key)}: {shown(value)}")
    return lines


def _entries(body: dict[str, Any], columns: tuple[str, ...], indent: str) -> list[str]:
    """A table of a reply's entries (one per key), its first column being the key."""
    entries = {key: value for key, value in body.items() if isinstance(value, dict)}
    if not entries:
        return [f"{indent}(none)"]
    rows = [{columns[0]: key, **value} for key, value in entries.items()]
    if "state" in columns:
        for row in rows:
            row.setdefault("state", row.get("status"))
    return _table(list(columns), rows, indent)


def _table(columns: list[str], rows: list[dict[str, Any]], indent: str) -> list[str]:
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    titles = [shown(c) for c in columns]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(titles)]
    out = [indent + "  ".join(c.ljust(w) for c, w in zip(titles, widths, strict=True)).rstrip()]
    for row in cells:
        padded = (value.ljust(width) for value, width in zip(row, widths, strict=True))
        out.append(indent + "  ".join(padded).rstrip())
    return out


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, list | dict):
        return json.dumps(value, sort_keys=True)
    return shown(value)


def shown(value: object) -> str:
    """Return *value* for the terminal: whole, with its non-printable characters escaped."""
    return escape(value, limit=None)

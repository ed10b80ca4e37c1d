"""``dispatcherctl top``'s snapshot as plain text, for when rich is not installed.

The same content as the rich screen (:mod:`dispatcher.server.ctl_top_render`), as lines:
a header, a block per service (its counters, its workers, its recent failures), the
services that did not answer, the durable queues and the notes. Tables are aligned as
the other commands align theirs (:func:`dispatcher.server.ctl_columns.aligned`) and, given
the terminal's width, fitted to it as the rich screen's are
(:func:`dispatcher.server.ctl_top_fit_width.fit_table`): each row then takes one line, a
failure's error cut short to the room left.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from dispatcher.server.ctl_columns import aligned, cut, shown
from dispatcher.server.ctl_columns import width as width_of
from dispatcher.server.ctl_top_data import Poll, node_of
from dispatcher.server.ctl_top_fit_width import COLUMN_GAP, fit_table
from dispatcher.server.ctl_top_text import (
    ERROR_WIDTH,
    FAILURE_COLUMNS,
    QUEUE_COLUMNS,
    WORKER_COLUMNS,
    failure_rows,
    header_text,
    older_failures,
    queue_rows,
    recent_failures,
    rejected_line,
    summary_lines,
    worker_notes,
    worker_rows,
)

INDENT: Final = "  "


def plain_screen(current: Poll, width: int | None = None) -> str:
    """One snapshot of *current* as text, each line ended by a newline.

    Given the *width* of the terminal it is shown in, its tables are fitted to it; without,
    every value is shown whole.
    """
    lines = [header_text(current)]
    for reply in sorted(current.replies, key=node_of):
        lines += ["", f"{shown(node_of(reply))}:"]
        try:
            lines += _service_lines(reply, current.wall, width)
        except Exception as exc:  # a reply may come from anyone: show the others
            why = f"cannot show this reply ({type(exc).__name__}: {shown(exc)}); --json shows it"
            lines.append(INDENT + why)
    lines += [f"{shown(node)}: no answer in time" for node in current.missing]
    if current.depths is not None:
        lines += ["", "durable queues (brokers.pg_queue):"]
        rows = queue_rows(current.depths) or [["(not sampled)"]]
        lines += aligned([list(QUEUE_COLUMNS), *rows], INDENT)
    lines += current.notes
    return "".join(line + "\n" for line in lines)


def _service_lines(reply: Mapping[str, Any], now: float, width: int | None) -> list[str]:
    if "error" in reply:
        return [f"{INDENT}error: {shown(reply['error'])}"]
    lines = [INDENT + line for line in summary_lines(reply, None)]
    rejected = rejected_line(reply)
    if rejected is not None:
        lines.append(INDENT + rejected)
    lines += _table(WORKER_COLUMNS, worker_rows(reply), width, INDENT)
    lines += [INDENT + note for note in worker_notes(reply)]
    failures = recent_failures(reply)
    if failures:
        lines.append(f"{INDENT}recent failures:")
        lines += _table(FAILURE_COLUMNS, failure_rows(failures, now), width, INDENT * 2)
        older = older_failures(failures)
        if older is not None:
            lines.append(INDENT * 2 + older)
    return lines


def _table(
    columns: tuple[str, ...],
    rows: list[list[str]],
    width: int | None,
    indent: str,
) -> list[str]:
    """*rows* under their *columns*, a line each, fitted to *width* if given.

    Fitted, a failure's error (the last column) is cut short (with an ellipsis) to the
    room the other columns leave it, rather than wrapped by the terminal.
    """
    room = None if width is None else width - len(indent)
    least = {"error": ERROR_WIDTH} if "error" in columns else {}
    kept, fitted = fit_table(columns, rows, room, least)
    if room is not None and kept[-1] == "error":
        others = sum(
            COLUMN_GAP + max(width_of(text) for text in (name, *(row[i] for row in fitted)))
            for i, name in enumerate(kept[:-1])
        )
        fitted = [[*row[:-1], cut(row[-1], room - others)] for row in fitted]
    return aligned([list(kept), *fitted], indent)

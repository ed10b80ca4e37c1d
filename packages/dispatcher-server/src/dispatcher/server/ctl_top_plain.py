"""``dispatcherctl top``'s snapshot as plain text, for when rich is not installed.

The same content as the rich screen (:mod:`dispatcher.server.ctl_top_render`), as lines:
a header, a block per service (its counters, its workers, its recent failures), the
services that did not answer, the durable queues and the notes. Tables are aligned as
the other commands align theirs (:func:`dispatcher.server.ctl_render.aligned`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dispatcher.server.ctl_render import aligned, shown
from dispatcher.server.ctl_top_text import (
    FAILURE_COLUMNS,
    QUEUE_COLUMNS,
    WORKER_COLUMNS,
    Poll,
    failure_rows,
    header_text,
    node_of,
    older_failures,
    queue_rows,
    recent_failures,
    rejected_line,
    summary_lines,
    worker_rows,
)

INDENT = "  "


def plain_screen(current: Poll) -> str:
    """One snapshot of *current* as text, each line ended by a newline."""
    lines = [header_text(current)]
    for reply in sorted(current.replies, key=node_of):
        lines += ["", f"{shown(node_of(reply))}:"]
        try:
            lines += _service_lines(reply, current.wall)
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


def _service_lines(reply: Mapping[str, Any], now: float) -> list[str]:
    if "error" in reply:
        return [f"{INDENT}error: {shown(reply['error'])}"]
    lines = [INDENT + line for line in summary_lines(reply, None)]
    rejected = rejected_line(reply)
    if rejected is not None:
        lines.append(INDENT + rejected)
    lines += aligned([list(WORKER_COLUMNS), *(worker_rows(reply) or [["(no workers)"]])], INDENT)
    failures = recent_failures(reply)
    if failures:
        lines.append(f"{INDENT}recent failures:")
        lines += aligned([list(FAILURE_COLUMNS), *failure_rows(failures, now)], INDENT * 2)
        older = older_failures(failures)
        if older is not None:
            lines.append(INDENT * 2 + older)
    return lines

"""The durable queue's jobs as a text table: ``dispatcherctl jobs`` without ``--json``.

One row per job: its uuid, queue and task (cut to :data:`CELL_WIDTH` columns), its state,
attempts, where it stands in time (:func:`when`) and the first line of its last error.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from dispatcher.server.ctl_columns import aligned, cut
from dispatcher.server.log_text import escape

ERROR_WIDTH: Final = 60
"""Columns of a job's last error shown in the table (its first line, cut with ``…``)."""

TITLES: Final = ("uuid", "queue", "task", "state", "attempts", "when", "last error")

CELL_WIDTH: Final = 64
"""Columns of a job's uuid, queue or task name shown in the table: a longer one (a row
inserted by hand may hold any text) is cut, ending with ``…``; ``--json`` shows it whole."""


def render_jobs(rows: list[dict[str, Any]]) -> str:
    """Job rows (from :func:`~dispatcher.server.queue_admin_list.list_jobs`) as a text table.

    Every value is escaped: a task name or an error cannot start a line of its own in the
    terminal or send it control sequences. Long values are cut to :data:`CELL_WIDTH` (the
    last error to :data:`ERROR_WIDTH`) columns, wide characters counting two.
    """
    cells = [
        [
            _cell(row["uuid"]),
            _cell(row["queue"]),
            _cell(row["task"]),
            row["state"],
            f"{row['attempts']}/{row['max_attempts']}",
            when(row),
            _first_line(row["last_error"]),
        ]
        for row in rows
    ]
    return "".join(line + "\n" for line in aligned([list(TITLES), *cells], indent=""))


def _cell(value: object, columns: int = CELL_WIDTH) -> str:
    """*value* escaped, cut to *columns* (escaping a bounded excerpt: a value may be huge)."""
    return cut(escape(value, limit=columns * 2), columns)


def when(row: dict[str, Any]) -> str:
    """Where a job stands in time: ``in 30s``, ``waiting 2m05s``, ``running 4s``, ``1h ago``.

    A running job whose lease ran out (its service stopped renewing it: it died, or cannot
    reach the database) says so: ``running 1m18s, lease expired 40s ago``; the next sweep
    takes it back.

    A time that is not a datetime (``infinity``, a year before 1 or after 9999: see
    :func:`~dispatcher.publish.timestamps.read_timestamp`) is shown as PostgreSQL wrote
    it, after what it is: ``run after infinity``, ``finished -infinity``.
    """
    now: datetime = row["now"]
    state = row["state"]
    if state == "queued":
        run_after = row["run_after"]
        if not isinstance(run_after, datetime):
            return f"run after {escape(run_after, limit=None)}"
        wait = (run_after - now).total_seconds()
        return f"in {duration(wait)}" if wait > 0 else f"waiting {duration(-wait)}"
    if state == "running" and row["started_at"] is not None:
        running = _since(now, row["started_at"], "running {}", "started {}")
        lease = row.get("lease_until")
        if isinstance(lease, datetime) and lease < now:
            running += f", lease expired {duration((now - lease).total_seconds())} ago"
        return running
    if row["finished_at"] is not None:
        return _since(now, row["finished_at"], "{} ago", "finished {}")
    return _since(now, row["created_at"], "created {} ago", "created {}")


def _since(now: datetime, then: datetime | str, shown: str, otherwise: str) -> str:
    if isinstance(then, datetime):
        return shown.format(duration((now - then).total_seconds()))
    return otherwise.format(escape(then, limit=None))


def duration(seconds: float) -> str:
    """*seconds* for people: ``42s``, ``5m03s``, ``2h10m``, ``3d04h``."""
    whole = max(0, round(seconds))
    minutes, secs = divmod(whole, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _first_line(error: str | None) -> str:
    if not error:
        return ""
    lines = error.strip().splitlines() or [""]
    if lines[0] == "[...]" and len(lines) > 1:  # how earlier versions began a cut error
        lines = lines[1:]
    # A traceback ends with the exception: show that rather than "Traceback (most recent...".
    line = lines[-1] if lines[0].startswith("Traceback") else lines[0]
    return _cell(line, ERROR_WIDTH)

"""``dispatcherctl jobs``, ``retry`` and ``purge``: the durable queue's rows, for operators.

These commands talk to the database of ``brokers.pg_queue`` directly (no service needs to
run). The exit status is 0 on success, 1 when the database cannot be reached, the tables
are missing (run ``dispatcherctl migrate``) or a named job cannot be retried, and 2 for
usage or config errors, including a config without ``brokers.pg_queue``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

import psycopg

from dispatcher.config import Settings
from dispatcher.publish import broker_unavailable
from dispatcher.schema import DispatcherError
from dispatcher.server import queue_admin
from dispatcher.server.ctl_arguments import count_between, seconds
from dispatcher.server.logsafe import escape
from dispatcher.server.queue_admin import FINISHED_STATES, MAX_LIMIT, STATES

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

COMMANDS: Final = frozenset({"jobs", "retry", "purge"})
"""The subcommands this module adds to ``dispatcherctl``."""

ERROR_WIDTH: Final = 60
"""Characters of a job's last error shown in the table (its first line)."""

AddCommand = Callable[[str, str], argparse.ArgumentParser]
"""``dispatcherctl``'s way to add a subcommand: ``add(name, help) -> parser``."""


def add_commands(add: AddCommand) -> None:
    """Add ``jobs``, ``retry`` and ``purge`` to ``dispatcherctl``'s command line."""
    jobs = add("jobs", "list the jobs of the durable queue (brokers.pg_queue)")
    jobs.add_argument("--state", choices=STATES, help="only jobs in this state")
    jobs.add_argument("--queue", help="only jobs of this queue")
    jobs.add_argument("--task", help="only jobs of this task")
    jobs.add_argument("--uuid", help="only the job with this uuid")
    jobs.add_argument(
        "--limit",
        type=count_between(1, MAX_LIMIT),
        default=50,
        metavar="N",
        help="most jobs shown (50)",
    )
    retry = add(
        "retry", "queue failed jobs again, with every attempt available (attempts reset to 0)"
    )
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("--uuid", help="the failed or cancelled job with this uuid")
    which.add_argument("--failed", action="store_true", help="every failed job")
    retry.add_argument("--queue", help="with --failed: only the failed jobs of this queue")
    purge = add("purge", "delete finished jobs that ended some time ago")
    purge.add_argument(
        "--state", choices=FINISHED_STATES, required=True, help="the finished jobs to delete"
    )
    purge.add_argument(
        "--older-than",
        type=seconds,
        required=True,
        metavar="SECONDS",
        help="only jobs that ended at least this long ago",
    )


def run(options: argparse.Namespace, settings: Settings) -> int:
    """Run the queue command in *options*; print its output; return the exit status."""
    if options.command == "retry" and options.queue and not options.failed:
        return _fail("retry --queue goes with --failed", EXIT_USAGE)
    try:
        section = queue_admin.queue_settings(settings)
    except queue_admin.QueueNotConfigured as exc:
        return _fail(str(exc), EXIT_USAGE)
    try:
        with psycopg.connect(section.conninfo, autocommit=True, connect_timeout=10) as conn:
            queue_admin.check_tables(conn, section.schema)
            return _COMMANDS[options.command](conn, section.schema, options)
    except psycopg.Error as exc:
        return _fail(str(broker_unavailable(section.conninfo, exc, "read the queue in")))
    except DispatcherError as exc:
        return _fail(str(exc))


def _fail(message: str, status: int = EXIT_FAILED) -> int:
    print(f"dispatcherctl: {escape(message, limit=None)}", file=sys.stderr)
    return status


def _jobs(conn: psycopg.Connection[Any], schema: str, options: argparse.Namespace) -> int:
    rows = queue_admin.list_jobs(
        conn,
        state=options.state,
        queue=options.queue,
        task=options.task,
        uuid=options.uuid,
        limit=min(options.limit + 1, MAX_LIMIT),
    )
    more = len(rows) > options.limit
    rows = rows[: options.limit]
    if options.json:
        shown = [{k: v for k, v in row.items() if k != "now"} for row in rows]
        print(json.dumps(shown, indent=2, default=_json_value))
    elif rows:
        print(render_jobs(rows), end="")
    else:
        print(f"no {options.state} jobs" if options.state else "no jobs")
    if more:
        print(
            f"dispatcherctl: showing the newest {options.limit}; --limit N shows more",
            file=sys.stderr,
        )
    return EXIT_OK


def _retry(conn: psycopg.Connection[Any], schema: str, options: argparse.Namespace) -> int:
    if options.uuid:
        queue_admin.retry_job(conn, schema, options.uuid)
        if options.json:
            print(json.dumps({"retried": 1, "skipped": 0, "uuid": options.uuid}))
        else:
            print(f"retried job {escape(options.uuid, limit=None)}")
        return EXIT_OK
    done = queue_admin.retry_failed(conn, schema, options.queue)
    if options.json:
        print(json.dumps({"retried": done.count, "skipped": done.skipped}))
        return EXIT_OK
    where = f" of queue {escape(options.queue, limit=None)}" if options.queue else ""
    print(f"retried {done.count} failed {_jobs_word(done.count)}{where}")
    if done.skipped:
        print(
            f"left {done.skipped} failed {_jobs_word(done.skipped)} as they were: "
            "an identical job is already waiting (on_duplicate)"
        )
    return EXIT_OK


def _purge(conn: psycopg.Connection[Any], schema: str, options: argparse.Namespace) -> int:
    count = queue_admin.purge(conn, schema, options.state, options.older_than)
    if options.json:
        print(json.dumps({"purged": count, "state": options.state}))
        return EXIT_OK
    print(
        f"purged {count} {options.state} {_jobs_word(count)} "
        f"that ended more than {options.older_than:g} s ago"
    )
    return EXIT_OK


Command = Callable[[psycopg.Connection[Any], str, argparse.Namespace], int]
_COMMANDS: Final[dict[str, Command]] = {"jobs": _jobs, "retry": _retry, "purge": _purge}


def _jobs_word(count: int) -> str:
    return "job" if count == 1 else "jobs"


def _json_value(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot show {type(value).__name__} as JSON")


TITLES: Final = ("uuid", "queue", "task", "state", "attempts", "when", "last error")


def render_jobs(rows: list[dict[str, Any]]) -> str:
    """Job rows (from :func:`~dispatcher.server.queue_admin.list_jobs`) as a text table.

    Every value is escaped: a task name or an error cannot start a line of its own in the
    terminal or send it control sequences.
    """
    cells = [
        [
            escape(row["uuid"], limit=None),
            escape(row["queue"], limit=None),
            escape(row["task"], limit=None),
            row["state"],
            f"{row['attempts']}/{row['max_attempts']}",
            when(row),
            _first_line(row["last_error"]),
        ]
        for row in rows
    ]
    widths = [max(len(title), *(len(r[i]) for r in cells)) for i, title in enumerate(TITLES)]
    lines = [TITLES, *cells]
    return "".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() + "\n"
        for line in lines
    )


def when(row: dict[str, Any]) -> str:
    """Where a job stands in time: ``in 30s``, ``waiting 2m05s``, ``running 4s``, ``1h ago``."""
    now: datetime = row["now"]
    state = row["state"]
    if state == "queued":
        wait = (row["run_after"] - now).total_seconds()
        return f"in {duration(wait)}" if wait > 0 else f"waiting {duration(-wait)}"
    if state == "running" and row["started_at"] is not None:
        return f"running {duration((now - row['started_at']).total_seconds())}"
    if row["finished_at"] is not None:
        return f"{duration((now - row['finished_at']).total_seconds())} ago"
    return f"created {duration((now - row['created_at']).total_seconds())} ago"


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
    # A traceback ends with the exception: show that rather than "Traceback (most recent...".
    line = lines[-1] if lines[0].startswith("Traceback") else lines[0]
    if len(line) > ERROR_WIDTH:
        line = line[: ERROR_WIDTH - 3] + "..."
    return escape(line, limit=None)

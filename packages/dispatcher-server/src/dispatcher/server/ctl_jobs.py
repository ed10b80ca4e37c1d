"""``dispatcherctl jobs``, ``retry``, ``purge`` and ``cancel-job``: the durable queue's rows.

These commands talk to the database of ``brokers.pg_queue`` directly (no service needs to
run). ``--timeout S`` is how long they wait for a lock another session holds on the jobs
table or one of its rows. The exit status is 0 on success, 1 when the database cannot be
reached or refuses, a lock or a statement takes too long or a named job cannot be retried,
and 2 for usage or config errors, including a config without ``brokers.pg_queue``, and for
tables not created yet (run ``dispatcherctl migrate``), as ``submit`` and the service do: no
retry mends those.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Final

import psycopg

from dispatcher.config import PgQueueBroker, Settings
from dispatcher.publish import broker_unavailable, describe_server
from dispatcher.publish.connections import (
    UNTRANSLATABLE,
    connection_options,
    describe_connection,
    hot_standby,
    note_server,
    refused_for_good,
    server_encoding,
    stopped_answering,
    with_cause,
)
from dispatcher.publish.mistakes import did_you_mean
from dispatcher.publish.pg_text import (
    field_holding,
    refused_character,
    unstorable,
    unstorable_reason,
)
from dispatcher.schema import DispatcherError
from dispatcher.server import queue_admin
from dispatcher.server.ctl_arguments import Text, count_between, seconds_up_to
from dispatcher.server.ctl_render import aligned, cut
from dispatcher.server.log_text import escape, first_line
from dispatcher.server.queue_admin import (
    FINISHED_STATES,
    MAX_LIMIT,
    MAX_OLDER_THAN,
    STATES,
    limit_waits,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

COMMANDS: Final = frozenset({"jobs", "retry", "purge", "cancel-job"})
"""The subcommands this module adds to ``dispatcherctl``."""

ERROR_WIDTH: Final = 60
"""Columns of a job's last error shown in the table (its first line, cut with ``…``)."""

AddCommand = Callable[..., argparse.ArgumentParser]
"""``dispatcherctl``'s way to add a subcommand: ``add(name, help, **taken) -> parser``, where
*taken* gives the help of the global options it takes (``json``, ``timeout``; ``None``: not
taken) and whether it takes ``expected_replies``."""

DOING: Final = {
    "jobs": ("read", "reading"),
    "retry": ("change", "changing"),
    "purge": ("change", "changing"),
    "cancel-job": ("change", "changing"),
}
"""What each command does to the queue, as its errors word it."""


def add_commands(add: AddCommand, default_timeout: float) -> None:
    """Add ``jobs``, ``retry``, ``purge`` and ``cancel-job`` to ``dispatcherctl``'s command line.

    *default_timeout* is ``dispatcherctl``'s ``--timeout`` when none is given.
    """
    taken = {
        "json": "print JSON instead of text",
        "timeout": "seconds to wait for a lock another session holds on the jobs table "
        f"(default: {default_timeout:g})",
        "expected_replies": False,  # no service is asked: no replies
    }
    jobs = add("jobs", "list the jobs of the durable queue (brokers.pg_queue)", **taken)
    jobs.add_argument("--state", choices=STATES, help="only jobs in this state")
    jobs.add_argument("--queue", action=Text, help="only jobs of this queue")
    jobs.add_argument("--task", action=Text, help="only jobs of this task")
    jobs.add_argument("--uuid", action=Text, help="only the job with this uuid")
    jobs.add_argument(
        "--limit",
        type=count_between(1, MAX_LIMIT),
        default=50,
        metavar="N",
        help="most jobs shown (50)",
    )
    retry = add(
        "retry",
        "queue failed jobs again, with every attempt available (attempts reset to 0)",
        **taken,
    )
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("--uuid", action=Text, help="the failed or cancelled job with this uuid")
    which.add_argument("--failed", action="store_true", help="every failed job")
    retry.add_argument(
        "--queue", action=Text, help="with --failed: only the failed jobs of this queue"
    )
    purge = add("purge", "delete finished jobs that ended some time ago", **taken)
    purge.add_argument(
        "--state", choices=FINISHED_STATES, required=True, help="the finished jobs to delete"
    )
    purge.add_argument(
        "--older-than",
        type=seconds_up_to(MAX_OLDER_THAN),
        required=True,
        metavar="SECONDS",
        help=f"only jobs that ended at least this long ago (at most {MAX_OLDER_THAN})",
    )
    purge.add_argument(
        "--queue", action=Text, help="only the finished jobs of this queue (default: every queue)"
    )
    cancel = add(
        "cancel-job",
        "cancel durable jobs that wait (queued): they end cancelled and never start",
        **taken,
    )
    job = cancel.add_mutually_exclusive_group(required=True)
    job.add_argument("--uuid", action=Text, help="the waiting job with this uuid")
    job.add_argument("--task", action=Text, help="every waiting job of this task")
    cancel.add_argument(
        "--queue", action=Text, help="with --task: only the waiting jobs of this queue"
    )


def run(options: argparse.Namespace, settings: Settings) -> int:
    """Run the queue command in *options*; print its output; return the exit status."""
    if options.command == "retry" and options.queue is not None and not options.failed:
        return _fail("retry --queue goes with --failed", EXIT_USAGE)
    if options.command == "cancel-job" and options.queue is not None and options.task is None:
        return _fail("cancel-job --queue goes with --task", EXIT_USAGE)
    try:
        section = queue_admin.queue_settings(settings)
    except queue_admin.QueueNotConfigured as exc:
        return _fail(str(exc), EXIT_USAGE)
    conn: psycopg.Connection[Any] | None = None
    try:
        with _connect(section.conninfo) as conn:
            encoding = server_encoding(conn)
            refusal = unstorable_option(options, encoding)
            if refusal is not None:
                return _fail(refusal, EXIT_USAGE)
            queue_admin.limit_waits(conn, options.timeout)
            queue_admin.check_tables(conn, section.schema, settings.file)
            try:
                return _run_command(conn, section, options)
            except psycopg.Error as exc:
                note_server(exc, conn, section.conninfo)  # (a standby, or a read-only role)
                refusal = refused_option(options, encoding, exc)
                if refusal is None:
                    raise
                return _fail(refusal, EXIT_USAGE)
    except psycopg.Error as exc:
        lost = conn is not None and conn.broken
        message = database_error(exc, section.conninfo, options.command, options.timeout, lost)
        # Refused for good (a missing privilege, say): trying again would not help.
        return _fail(message, EXIT_USAGE if refused_for_good(exc) else EXIT_FAILED)
    except queue_admin.TablesMissing as exc:
        return _fail(str(exc), EXIT_USAGE)  # set-up to finish: retrying alone would not help
    except DispatcherError as exc:
        return _fail(str(exc))


def _run_command(
    conn: psycopg.Connection[Any], section: PgQueueBroker, options: argparse.Namespace
) -> int:
    queue = getattr(options, "queue", None)
    if queue is not None and not queue_admin.queue_known(conn, section, queue):
        return _fail(unknown_queue(queue, section.queues), EXIT_USAGE)
    if options.command == "jobs" and hot_standby(conn):
        print(
            f"dispatcherctl: warning: {describe_connection(conn, section.conninfo)} is a "
            "standby (in_hot_standby = on): its rows may lag behind the primary's",
            file=sys.stderr,
        )
    return _COMMANDS[options.command](conn, section.schema, options)


TEXT_OPTIONS: Final = ("uuid", "task", "queue")
"""The options of the queue commands whose text is compared with the table's."""


def unstorable_option(options: argparse.Namespace, encoding: str | None) -> str | None:
    """Why an option's text cannot be in the table; ``None`` when every one can.

    The database's *encoding* lacks one of its characters: no job can hold it, and sent, it
    would be refused.
    """
    given = [(name, getattr(options, name, None)) for name in TEXT_OPTIONS]
    found = unstorable([(name, value) for name, value in given if value is not None], [encoding])
    if found is None:
        return None
    name, character, encoding = found
    return f"argument --{name}: {unstorable_reason(character, encoding)}"


def refused_option(
    options: argparse.Namespace, encoding: str | None, exc: psycopg.Error
) -> str | None:
    """Why the database refused an option's text, as its error *exc* says; ``None`` if not that.

    For the encodings whose characters are not checked before sending (``EUC_JP``, say).
    """
    if exc.sqlstate not in UNTRANSLATABLE:
        return None
    character = refused_character(str(exc))
    given = [(name, getattr(options, name, None)) for name in TEXT_OPTIONS]
    name = None if character is None else field_holding(given, character)
    if character is None or name is None:
        return None
    return f"argument --{name}: {unstorable_reason(character, encoding)}"


def unknown_queue(queue: str, configured: Sequence[str]) -> str:
    """Why a ``--queue`` that neither the config lists nor any job names is refused."""
    listed = ", ".join(escape(name, limit=None) for name in configured)
    return (
        f"--queue {escape(queue, limit=None)}: no such queue (not in brokers.pg_queue.queues:"
        f" {listed}; and no job in the table names it){did_you_mean(queue, configured)}"
    )


def _connect(conninfo: str) -> psycopg.Connection[Any]:
    """An autocommit connection for a queue command.

    A dead peer is noticed (:func:`~dispatcher.publish.connections.connection_options`): a
    network partition in the middle of a command fails it within about 20 s.
    """
    return psycopg.connect(
        conninfo, autocommit=True, connect_timeout=10, **connection_options(conninfo)
    )


def database_error(
    exc: psycopg.Error, conninfo: str, command: str, timeout: float, lost: bool = False
) -> str:
    """One line saying why *command* failed in the database of *conninfo* (no password).

    A lock or a statement that took too long, the database out of reach or refusing the
    command, the connection *lost* during a statement (the database stopped answering, or
    ended the session), or a value it could not take: each is worded as what it is.
    """
    verb, gerund = DOING[command]
    if lost:
        then = "" if verb == "read" else "the change may or may not have been made"
        return str(stopped_answering(conninfo, exc, f"{verb} the queue in", "the command", then))
    if isinstance(exc, psycopg.errors.LockNotAvailable):
        return (
            "the jobs table (or a job's row) is locked by another session: gave up after "
            f"{timeout:g} s (--timeout S waits longer)"
        )
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return f"the database cancelled a statement on the jobs table: {first_line(exc)}"
    unreachable = isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))
    if unreachable or isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return str(broker_unavailable(conninfo, exc, f"{verb} the queue in"))
    reason = with_cause(exc, first_line(exc))
    return f"{gerund} the queue in {describe_server(conninfo)} failed: {reason}"


def _fail(message: str, status: int = EXIT_FAILED) -> int:
    print(f"dispatcherctl: {escape(message, limit=None)}", file=sys.stderr)
    return status


def _jobs(conn: psycopg.Connection[Any], schema: str, options: argparse.Namespace) -> int:
    rows = queue_admin.list_jobs(
        conn,
        schema,
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
    if options.uuid is not None:
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
    where = "" if options.queue is None else f" of queue {escape(options.queue, limit=None)}"
    print(f"retried {done.count} failed {_jobs_word(done.count)}{where}")
    if done.skipped:
        print(
            f"left {done.skipped} failed {_jobs_word(done.skipped)} as they were: "
            "an identical job is already waiting (on_duplicate)"
        )
    return EXIT_OK


def _purge(conn: psycopg.Connection[Any], schema: str, options: argparse.Namespace) -> int:
    queue = options.queue
    count = queue_admin.purge(conn, schema, options.state, options.older_than, queue)
    if options.json:
        shown = {"purged": count, "state": options.state}
        print(json.dumps(shown if queue is None else {**shown, "queue": queue}))
        return EXIT_OK
    of_queue = "" if queue is None else f" of queue {escape(queue, limit=None)}"
    print(
        f"purged {count} {options.state} {_jobs_word(count)}{of_queue} "
        f"that ended more than {options.older_than:.15g} s ago"
    )
    return EXIT_OK


def _cancel_job(conn: psycopg.Connection[Any], schema: str, options: argparse.Namespace) -> int:
    if options.task is not None:
        return _cancel_jobs_of_task(conn, schema, options.task, options.queue, options.json)
    queue = queue_admin.cancel_waiting(conn, schema, options.uuid)
    if options.json:
        print(json.dumps({"cancelled": 1, "uuid": options.uuid, "queue": queue}))
    else:
        print(
            f"cancelled waiting job {escape(options.uuid, limit=None)} "
            f"of queue {escape(queue, limit=None)}"
        )
    return EXIT_OK


def _cancel_jobs_of_task(
    conn: psycopg.Connection[Any], schema: str, task: str, queue: str | None, as_json: bool
) -> int:
    cancelled = queue_admin.cancel_waiting_of_task(conn, schema, task, queue)
    count = sum(cancelled.values())
    if as_json:
        print(json.dumps({"cancelled": count, "task": task, "by_queue": dict(cancelled)}))
        return EXIT_OK
    where = "" if queue is None else f" in queue {escape(queue, limit=None)}"
    print(
        f"cancelled {count} waiting {_jobs_word(count)} of task {escape(task, limit=None)}{where}"
    )
    return EXIT_OK


def waiting_of_task(settings: Settings, task: str, timeout: float) -> int:
    """How many durable jobs of *task* wait in the table.

    0 without a durable queue, or when the table cannot be read: ``dispatcherctl cancel``
    only adds a hint with it.
    """
    section = settings.brokers.pg_queue
    if section is None:
        return 0
    try:
        with _connect(section.conninfo) as conn:
            limit_waits(conn, timeout)
            return queue_admin.count_waiting(conn, section.schema, task)
    except (psycopg.Error, DispatcherError):  # a task no row can hold (UNTRANSLATABLE) too
        return 0


def cancel_waiting_job(
    settings: Settings, uuid: str, task: str | None, timeout: float
) -> tuple[str | None, str | None]:
    """Cancel the durable job *uuid* if it waits in the table (and is of *task*, if given).

    What ``dispatcherctl cancel --uuid U`` does beside the services' cancel, which reaches
    only the jobs they hold: a job waiting in the table (delayed, or waiting for a retry) is
    no service's yet. Returns ``(done, problem)``: the line saying which job was cancelled,
    or why none could be looked for (the database out of reach, say); both ``None`` when no
    such job waits, or the config has no durable queue.
    """
    section = settings.brokers.pg_queue
    if section is None:
        return None, None
    conn: psycopg.Connection[Any] | None = None
    try:
        with _connect(section.conninfo) as conn:
            texts = [("uuid", uuid), ("task", task)] if task is not None else [("uuid", uuid)]
            if unstorable(texts, [server_encoding(conn)]) is not None:
                return None, None  # no job can have it
            limit_waits(conn, timeout)
            try:
                queue = queue_admin.cancel_waiting(conn, section.schema, uuid, task)
            except psycopg.Error as exc:
                note_server(exc, conn, section.conninfo)  # (a standby, or a read-only role)
                raise
    except (queue_admin.NotCancelled, queue_admin.TablesMissing):
        return None, None
    except psycopg.Error as exc:
        if exc.sqlstate in UNTRANSLATABLE:
            return None, None  # the database's encoding lacks a character of it: no job has it
        lost = conn is not None and conn.broken
        why = database_error(exc, section.conninfo, "cancel-job", timeout, lost)
        return None, f"could not look for a waiting durable job {uuid}: {why}"
    return f"cancelled waiting durable job {uuid} of queue {queue}", None


def waits(settings: Settings, uuid: str, timeout: float) -> bool:
    """Whether the durable job *uuid* waits in the table (``False`` when that cannot be read)."""
    section = settings.brokers.pg_queue
    if section is None:
        return False
    try:
        with _connect(section.conninfo) as conn:
            limit_waits(conn, timeout)
            return bool(queue_admin.list_jobs(conn, section.schema, state="queued", uuid=uuid))
    except (psycopg.Error, DispatcherError):  # a uuid no row can hold (UNTRANSLATABLE) too
        return False


Command = Callable[[psycopg.Connection[Any], str, argparse.Namespace], int]
_COMMANDS: Final[dict[str, Command]] = {
    "jobs": _jobs,
    "retry": _retry,
    "purge": _purge,
    "cancel-job": _cancel_job,
}


def _jobs_word(count: int) -> str:
    return "job" if count == 1 else "jobs"


def _json_value(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot show {type(value).__name__} as JSON")


TITLES: Final = ("uuid", "queue", "task", "state", "attempts", "when", "last error")

CELL_WIDTH: Final = 64
"""Columns of a job's uuid, queue or task name shown in the table: a longer one (a row
inserted by hand may hold any text) is cut, ending with ``…``; ``--json`` shows it whole."""


def render_jobs(rows: list[dict[str, Any]]) -> str:
    """Job rows (from :func:`~dispatcher.server.queue_admin.list_jobs`) as a text table.

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

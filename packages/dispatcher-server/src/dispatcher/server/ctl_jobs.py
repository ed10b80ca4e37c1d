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
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

import psycopg

from dispatcher.config import PgQueueBroker, Settings
from dispatcher.publish.broker_errors import server_encoding
from dispatcher.publish.refusals import hot_standby, note_server, refused_for_good
from dispatcher.publish.server_description import describe_connection
from dispatcher.schema import DispatcherError
from dispatcher.server import (
    queue_admin,
    queue_admin_cancel,
    queue_admin_list,
    queue_admin_purge,
    queue_admin_retry,
)
from dispatcher.server.ctl_jobs_database import connect, database_error
from dispatcher.server.ctl_jobs_refusals import refused_option, unknown_queue, unstorable_option
from dispatcher.server.ctl_jobs_table import render_jobs
from dispatcher.server.log_text import escape
from dispatcher.server.queue_admin_list import MAX_LIMIT

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

COMMANDS: Final = frozenset({"jobs", "retry", "purge", "cancel-job"})
"""The subcommands this module runs (:mod:`~dispatcher.server.ctl_jobs_parser` adds them
to ``dispatcherctl``)."""


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
        with connect(section.conninfo) as conn:
            encoding = server_encoding(conn)
            refusal = unstorable_option(options, encoding)
            if refusal is not None:
                return _fail(refusal, EXIT_USAGE)
            queue_admin.limit_waits(conn, options.timeout, section.conninfo)
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


def _fail(message: str, status: int = EXIT_FAILED) -> int:
    print(f"dispatcherctl: {escape(message, limit=None)}", file=sys.stderr)
    return status


def _jobs(conn: psycopg.Connection[Any], schema: str, options: argparse.Namespace) -> int:
    rows = queue_admin_list.list_jobs(
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
        queue_admin_retry.retry_job(conn, schema, options.uuid)
        if options.json:
            print(json.dumps({"retried": 1, "skipped": 0, "uuid": options.uuid}))
        else:
            print(f"retried job {escape(options.uuid, limit=None)}")
        return EXIT_OK
    done = queue_admin_retry.retry_failed(conn, schema, options.queue)
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
    count = queue_admin_purge.purge(conn, schema, options.state, options.older_than, queue)
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
    queue = queue_admin_cancel.cancel_waiting(conn, schema, options.uuid)
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
    cancelled = queue_admin_cancel.cancel_waiting_of_task(conn, schema, task, queue)
    count = sum(cancelled.values())
    if as_json:
        print(json.dumps({"cancelled": count, "task": task, "by_queue": dict(cancelled)}))
        return EXIT_OK
    where = "" if queue is None else f" in queue {escape(queue, limit=None)}"
    print(
        f"cancelled {count} waiting {_jobs_word(count)} of task {escape(task, limit=None)}{where}"
    )
    return EXIT_OK


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

"""What ``dispatcherctl cancel`` does to durable jobs that wait in the queue's table.

A job waiting in the table (delayed, or waiting for a retry) is no service's yet: the
services' ``cancel`` cannot reach it. :mod:`dispatcher.server.ctl_control` cancels it here
(``cancel --uuid U``), or says how many such jobs a task has (a hint). Each reads or
changes the table of ``brokers.pg_queue`` directly, and never fails the command: a table
that cannot be read is said, or taken for no job.
"""

from __future__ import annotations

from typing import Any

import psycopg

from dispatcher.config import Settings
from dispatcher.publish.broker_errors import UNTRANSLATABLE, server_encoding
from dispatcher.publish.pg_text import unstorable
from dispatcher.publish.refusals import note_server
from dispatcher.schema import DispatcherError
from dispatcher.server import queue_admin, queue_admin_cancel, queue_admin_list
from dispatcher.server.ctl_jobs_database import connect, database_error
from dispatcher.server.queue_admin import limit_waits


def waiting_of_task(settings: Settings, task: str, timeout: float) -> int:
    """How many durable jobs of *task* wait in the table.

    0 without a durable queue, or when the table cannot be read: ``dispatcherctl cancel``
    only adds a hint with it.
    """
    section = settings.brokers.pg_queue
    if section is None:
        return 0
    try:
        with connect(section.conninfo) as conn:
            limit_waits(conn, timeout, section.conninfo)
            return queue_admin_cancel.count_waiting(conn, section.schema, task)
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
        with connect(section.conninfo) as conn:
            texts = [("uuid", uuid), ("task", task)] if task is not None else [("uuid", uuid)]
            if unstorable(texts, [server_encoding(conn)]) is not None:
                return None, None  # no job can have it
            limit_waits(conn, timeout, section.conninfo)
            try:
                queue = queue_admin_cancel.cancel_waiting(conn, section.schema, uuid, task)
            except psycopg.Error as exc:
                note_server(exc, conn, section.conninfo)  # (a standby, or a read-only role)
                raise
    except (queue_admin_cancel.NotCancelled, queue_admin.TablesMissing):
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
        with connect(section.conninfo) as conn:
            limit_waits(conn, timeout, section.conninfo)
            return bool(queue_admin_list.list_jobs(conn, section.schema, state="queued", uuid=uuid))
    except (psycopg.Error, DispatcherError):  # a uuid no row can hold (UNTRANSLATABLE) too
        return False

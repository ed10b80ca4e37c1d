"""Submitting tasks from Django code: delivered when the transaction commits, never on rollback.

Where the task's broker (``pg_notify`` or ``pg_queue``) uses the same database as the Django
connection (same host, port and database name; always so when its conninfo is taken from
``DATABASES``), the message is sent on Django's own psycopg 3 connection, inside its current
transaction: PostgreSQL delivers the NOTIFY, or keeps the job row, only when it commits.
Otherwise (another database, SQLite, psycopg2, the socket broker) the send is registered
with ``transaction.on_commit()`` and made on the SDK's own connection after the commit.
Either way, outside any ``atomic()`` block (autocommit) the task is sent at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, ParamSpec, overload

import psycopg
from django.db import DEFAULT_DB_ALIAS, connections, transaction

from dispatcher.config import get_settings
from dispatcher.contrib.django.databases import same_database
from dispatcher.publish import OnDuplicate, Submission, interception, prepare_submission
from dispatcher.publish.processor_options import ProcessorOptions
from dispatcher.publish.registry import Queue
from dispatcher.publish.routing import broker_for
from dispatcher.publish.submit_sync import send
from dispatcher.publish.task_types import SubmissionMethods

P = ParamSpec("P")


def submit_on_commit(
    task: str | Callable[..., Any],
    /,
    *,
    args: Sequence[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    using: str | None = None,
    queue: Queue = None,
    uuid: str | None = None,
    timeout: float | None = None,
    delay: float | None = None,
    on_duplicate: OnDuplicate | None = None,
    bind: bool | None = None,
    extra: Mapping[str, Any] | None = None,
    max_attempts: int | None = None,
    processor_options: ProcessorOptions = None,
) -> Submission:
    """Submit one task as part of the current transaction of the Django database *using*.

    Inside ``transaction.atomic(using=...)`` the task is delivered when the outermost block
    commits, and never if the block (or the savepoint it was submitted in) rolls back;
    outside one, it is sent at once. *using* is a ``DATABASES`` alias (default:
    ``"default"``); the other options are those of
    :func:`~dispatcher.publish.submit_task`. The message is checked now: a bad option
    raises here, not at the commit. A failed send raises where the send happens: here when
    it joins the transaction or runs at once, else when the block commits.

    :raises InvalidSubmission: when an option or argument is wrong (nothing is sent).
    :raises BrokerUnavailable: when the broker's database cannot be reached.
    :raises django.db.TransactionManagementError: when the transaction is already broken.
    """
    submission = prepare_submission(
        task,
        args=args,
        kwargs=kwargs,
        queue=queue,
        uuid=uuid,
        timeout=timeout,
        delay=delay,
        on_duplicate=on_duplicate,
        bind=bind,
        extra=extra,
        max_attempts=max_attempts,
        processor_options=processor_options,
    )
    alias = using or DEFAULT_DB_ALIAS
    connection = transaction_connection(alias, submission.channel)
    if connection is not None:
        send([submission], connection)
    else:
        # At the commit, on the SDK's own connection: not the application's (through a
        # connection_factory), whose transaction a test case never commits.
        transaction.on_commit(partial(send, [submission], own_connection=True), using=alias)
    return submission


@overload
def delay_on_commit(task: str | type[object], /, *args: Any, **kwargs: Any) -> Submission: ...
@overload
def delay_on_commit(
    task: SubmissionMethods[P], /, *args: P.args, **kwargs: P.kwargs
) -> Submission: ...
def delay_on_commit(task: Any, /, *args: Any, **kwargs: Any) -> Submission:
    """Submit *task* with these arguments once the current transaction commits.

    ``delay_on_commit(send_email, "someone@example.com")`` is ``send_email.delay(...)``
    made part of the transaction of the ``default`` database: see
    :func:`submit_on_commit`, which also takes options and another database. A type
    checker checks the arguments against the task's parameters, as for ``.delay()``.
    """
    return submit_on_commit(task, args=args, kwargs=kwargs)


def transaction_connection(alias: str, channel: str) -> psycopg.Connection[Any] | None:
    """Django's psycopg 3 connection of *alias*, when a task for *channel* may be sent on it.

    That is when the broker of *channel* is ``pg_notify`` or ``pg_queue`` and uses the
    database of *alias*, and the transaction is not one of Django's ``TestCase`` (which is
    never committed: a task waits for it with ``on_commit()``, as Django's test tools
    expect, so that ``captureOnCommitCallbacks(execute=True)`` sends it). ``None``
    otherwise: the caller then waits for the commit.

    :raises django.db.TransactionManagementError: when the transaction is already broken.
    """
    conninfo = _broker_conninfo(channel)
    database = connections[alias]
    if conninfo is None or not same_database(conninfo, database.settings_dict):
        return None
    database.validate_no_broken_transaction()
    if any(getattr(block, "_from_testcase", False) for block in database.atomic_blocks):
        return None
    database.ensure_connection()
    raw = database.connection
    if not isinstance(raw, psycopg.Connection):  # psycopg2: the SDK speaks psycopg 3
        return None
    return raw


def _broker_conninfo(channel: str) -> str | None:
    """The conninfo of the broker a task for *channel* goes through, if it is a database."""
    if interception.current is not None:  # taken in-process (dispatcher.testing), at commit
        return None
    settings = get_settings()
    name = broker_for(channel, settings).name
    if name == "pg_notify" and settings.brokers.pg_notify is not None:
        return settings.brokers.pg_notify.conninfo
    if name == "pg_queue" and settings.brokers.pg_queue is not None:
        return settings.brokers.pg_queue.conninfo
    return None

"""Sending task messages from asyncio code (the source the sync twin is generated from).

``submit_sync.py`` is generated from this file by ``tools/async_to_sync.py``; edit this one
and run ``hatch run generate-sync``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

from psycopg import AsyncConnection
from psycopg.pq import TransactionStatus

from dispatcher.publish import interception
from dispatcher.publish.batching import (
    Batch,
    Block,
    BlockExit,
    BlockState,
    collect,
    leave,
    sending_config,
)
from dispatcher.publish.brokers import Outgoing, PublishBroker, is_job_broker
from dispatcher.publish.caller_connections import expect_connection, in_use_here
from dispatcher.publish.event_loops import async_require_loop
from dispatcher.publish.messages import prepare_submission
from dispatcher.publish.pg_notify import PgNotifyPublisher
from dispatcher.publish.pg_queue import PgQueuePublisher
from dispatcher.publish.processor_options import ProcessorOptions
from dispatcher.publish.registry import Queue
from dispatcher.publish.routing import log_sent, logger, plan
from dispatcher.publish.submission import Submission
from dispatcher.schema import OnDuplicate

Groups = list[tuple[PublishBroker, list[Submission]]]
"""Submissions grouped by the broker they go through, in order (see ``routing.plan``)."""


async def asend(
    submissions: Sequence[Submission],
    connection: object | None = None,
    *,
    own_connection: bool = False,
) -> None:
    """Send prepared submissions, each through the broker its queue goes to.

    Over pg_notify they go in one statement: with *connection*, the NOTIFYs join its
    current transaction (delivered when it commits, never if it rolls back); without, the
    SDK's own connection sends them at once (*own_connection*: that one, even where
    ``connection_factory`` names the application's): a connection the server ended while
    idle is replaced before sending, and a send whose connection broke under it is not
    repeated (NOTIFY is at most once). Tasks for durable queues are stored as jobs the same
    way, in one statement per broker (a lost connection: stored again once, the uuid keeping
    the job single), or with the NOTIFYs in one statement when a batch spans both on one
    database (not repeated). See :mod:`dispatcher.publish.routing` for how the broker is chosen.
    While an interceptor is installed (:mod:`dispatcher.publish.interception`), it takes
    them instead and nothing is sent (the async API still needs an asyncio loop, as for a
    real send; any one, Windows' ProactorEventLoop too, since nothing connects).

    :raises BrokerUnavailable: when the broker cannot be reached, or fails the send in a way
        sending again later may cure.
    :raises PublishError: when it refuses the message for good (a missing privilege).
    """
    if not submissions:
        return
    interceptor = interception.current
    if interceptor is not None:
        async_require_loop(connects=False)  # (the async API: as a real send, under trio say)
        await interceptor.asend(submissions, connection)
        return
    groups = plan(submissions, connection)
    if len(groups) > 1:
        await _asend_together(groups, connection, own_connection)
    else:
        await _asend_groups(groups, connection, own_connection)
    if logger.isEnabledFor(logging.DEBUG):
        log_sent(groups)


async def _asend_groups(groups: Groups, connection: object | None, own_connection: bool) -> None:
    """Send each group through its broker, one statement per group, in order."""
    for broker, group in groups:
        if is_job_broker(broker):
            await broker.asend_jobs(group, connection)
        else:
            messages = [(s.channel, payload) for s in group for payload in s.payloads]
            own = getattr(broker, "asend_own", None) if own_connection else None
            if own is not None and connection is None:
                await own(messages)
            else:
                await broker.asend(messages, connection)


async def _asend_together(groups: Groups, connection: object | None, own_connection: bool) -> None:
    """Send a batch that spans brokers all or nothing, where it can.

    On the caller's *connection*: in its transaction, or in one of their own when it is in
    autocommit mode and in none. Without one, when the brokers are pg_queue and pg_notify
    sending on the SDK's own connection to one database (no ``connection_factory``): in one
    statement storing the jobs and sending the NOTIFYs, on that shared connection. Else
    (brokers on several databases, plug-ins) one after another, each all or nothing.
    """
    if connection is not None:
        if (
            isinstance(connection, AsyncConnection)
            and connection.autocommit
            and connection.info.transaction_status == TransactionStatus.IDLE
            and not in_use_here(connection)  # (refused by each broker, rather than waited for)
        ):
            async with connection.transaction():
                await _asend_groups(groups, connection, own_connection)
        else:
            await _asend_groups(groups, connection, own_connection)
        return
    together = _one_statement(groups, own_connection)
    if together is None:
        await _asend_groups(groups, None, own_connection)
    else:
        queue_broker, jobs, messages = together
        await queue_broker.asend_with_notifies(jobs, messages)


def _one_statement(
    groups: Groups, own_connection: bool
) -> tuple[PgQueuePublisher, list[Submission], list[Outgoing]] | None:
    """The jobs and the NOTIFYs of *groups*, if one statement on one database can send them.

    That is, when the brokers are pg_queue and pg_notify, and pg_notify sends on the SDK's
    own connection to pg_queue's database.
    """
    queue_broker: PgQueuePublisher | None = None
    jobs: list[Submission] = []
    messages: list[Outgoing] = []
    conninfos: set[str | None] = set()
    for broker, group in groups:
        if isinstance(broker, PgQueuePublisher) and queue_broker in (None, broker):
            queue_broker = broker
            conninfos.add(broker.settings.conninfo)
            jobs.extend(group)
        elif isinstance(broker, PgNotifyPublisher):
            conninfos.add(broker.conninfo if own_connection else broker.aown_database())
            messages.extend((s.channel, payload) for s in group for payload in s.payloads)
        else:
            return None  # a plug-in's: its own way to send
    if queue_broker is None or not messages or len(conninfos) != 1:
        return None
    return queue_broker, jobs, messages


async def asubmit_task(
    task: str | Callable[..., Any],
    /,
    *,
    args: Sequence[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    queue: Queue = None,
    uuid: str | None = None,
    timeout: float | None = None,
    delay: float | None = None,
    on_duplicate: OnDuplicate | None = None,
    bind: bool | None = None,
    extra: Mapping[str, Any] | None = None,
    connection: AsyncConnection[Any] | None = None,
    max_attempts: int | None = None,
    processor_options: ProcessorOptions = None,
) -> Submission:
    """Submit one task; return what was sent.

    *task* is a function registered with ``@task`` or a task name such as
    ``"myapp.tasks.send_email"`` (the task's code need not be importable here). Options left
    as ``None`` take the defaults given to ``@task``:

    - *queue*: the channel, or a function returning it; default: ``@task(queue=...)``, else
      ``brokers.pg_notify.default_publish_channel``, else the only configured channel; a
      queue listed under ``brokers.pg_queue.queues`` is durable: the task is stored as a job;
    - *uuid*: the submission's identifier (default: a new UUID4);
    - *timeout*: seconds the task may run; *delay*: seconds before it starts;
    - *on_duplicate*: ``parallel``, ``discard``, ``serial`` or ``queue_one``;
    - *bind*: pass the task an object with its uuid and a ``control()`` call;
    - *extra*: more top-level keys for the message (e.g. ``{"guid": ...}``);
    - *connection*: send inside this connection's transaction (delivered on commit only);
    - *max_attempts*: for a durable queue, how many times the job may be started (1-1000;
      default: ``@task(max_attempts=...)``, else the queue's); an error for other queues;
    - *processor_options*: dispatcherd's params objects (``Delayer.Params``,
      ``Blocker.Params``...) or dicts, setting ``delay`` and ``on_duplicate``.

    The result also unpacks as dispatcherd's ``(body, queue)``.

    Everything is checked before sending; inside a ``batch()`` block the message is only
    queued and leaves when the block ends.

    :raises InvalidSubmission: when an option or argument is wrong (nothing is sent).
    :raises BrokerUnavailable: when the database cannot be reached (sending again later may
        succeed).
    :raises PublishError: when the database refuses the message for good (a missing
        privilege, missing tables).
    :raises ConfigError: when the config cannot be read or is invalid; a
        ``NotConfiguredError`` when none was given (``setup()``) and none is found (an explicit
        *queue* and *connection* need none). Neither is a ``PublishError``.
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
    if not collect(submission, connection):
        await asend([submission], connection)
    return submission


def abatch(connection: AsyncConnection[Any] | None = None) -> AsyncBatchBlock:
    """Collect the submissions made in the block and send them in one round trip at its end.

    Calls inside the block return their :class:`Submission` at once. If the block raises,
    nothing is sent. With *connection*, the batch joins that connection's transaction.
    Inside another block, it joins that block's batch when it ends (unless given a
    connection of its own): all or nothing with the outer block.

    :raises TypeError: when *connection* is not a psycopg connection of this function's kind
        (checked on entering, even if nothing is submitted; a testing mode takes anything).
    :raises RuntimeError: on entering a block entered before (each ``with`` takes its own).
    """
    return AsyncBatchBlock(connection)


async def _aexit_block(
    state: BlockState,
    kind: type[BaseException] | None,
    value: BaseException | None,
    traceback: TracebackType | None,
) -> None:
    """Send the block's batch (or join it to the outer one's), unless the block raised."""
    submissions = leave(state, kind is None)
    if submissions:
        with sending_config(state):
            await asend(submissions, state.connection)


class AsyncBatchBlock(Block):
    """The block of a batch (see :func:`abatch`, and the sync twin's ``batch``); entered once."""

    __slots__ = ()

    def __init__(self, connection: AsyncConnection[Any] | None) -> None:
        super().__init__(connection)

    async def __aenter__(self) -> Batch:
        """Make a new batch current; return it."""
        connection = self._state.connection
        if connection is not None and interception.current is None:
            expect_connection(connection, AsyncConnection, "abatch", "batch")
        return self._enter()

    __aexit__ = BlockExit(_aexit_block)
    """Send the batch (or join it to the outer one's), unless the block raised."""

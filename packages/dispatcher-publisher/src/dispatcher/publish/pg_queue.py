"""The durable pg_queue broker's publishing side: each task becomes a row of the jobs table.

All the jobs of one send go in one statement: an ``INSERT`` of every row (arrays unnested,
``ON CONFLICT DO NOTHING``: a uuid already stored, or a duplicate ``on_duplicate`` refuses,
is skipped) followed, in the same statement, by one NOTIFY on
:data:`~dispatcher.schema.QUEUE_WAKEUP_CHANNEL` per queue that received a row (best effort:
none while the server's NOTIFY queue is half full or more; the services poll). In the
caller's transaction when it passes a connection (the jobs exist once it commits, never if it
rolls back); else on the SDK's own connection, as a transaction of its own.

The message is stored as it is: its JSON text, whole (no chunks) and unsigned (anyone who may
insert into the table is trusted; signing protects NOTIFY, which any database user can send).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any, Final

from dispatcher.config import PgQueueBroker, Settings
from dispatcher.publish.brokers import Outgoing, ReplyCollector
from dispatcher.publish.errors import PublishError
from dispatcher.publish.job import quote_identifier
from dispatcher.publish.notify_statements import notify_statement
from dispatcher.publish.queue_async import astore
from dispatcher.publish.queue_sync import store
from dispatcher.publish.submission import Submission
from dispatcher.schema import (
    QUEUE_WAKEUP_CHANNEL,
    QUEUE_WAKEUP_IF_ROOM,
    DecodeError,
    decode_json,
    duplicate_key,
)

TRACKED: Final = frozenset({"discard", "serial", "queue_one"})
"""The ``on_duplicate`` modes the table enforces (``parallel`` is no mode at all)."""

JobRows = tuple[
    list[str],
    list[str],
    list[str],
    list[str],
    list[int],
    list[float],
    list[str | None],
    list[str | None],
]
"""The columns of the rows to insert, one list each: uuid, queue, task, message, max_attempts,
delay (seconds), on_duplicate, dup_key."""


def insert_statement(schema: str) -> str:
    """The statement storing :data:`JobRows` in *schema*'s jobs table and waking their queues.

    One NOTIFY per queue that received a row. Rows keep their order (their ids follow it);
    a row whose uuid is stored already, or that its ``on_duplicate`` refuses, is skipped
    without error. A row's ``created_at`` is the statement's time, not the start of its
    transaction (``now()``), and its delay counts from it: in the caller's long transaction,
    the job still waits its delay after the call.
    """
    return f"{_store(schema)} {_WAKE}"


def insert_and_notify_statement(schema: str, notify_query: str) -> str:
    """:func:`insert_statement` that also runs *notify_query*, a ``SELECT`` of NOTIFYs.

    Its parameters follow :data:`JobRows`'. One statement, so all or nothing even in
    autocommit mode: the rows are stored and every notification sent, or none.
    """
    return f"{_store(schema)} SELECT ({_WAKE}), ({notify_query})"


_COLUMNS: Final = ", ".join(
    f"pg_catalog.unnest(%b::{kind}[])"
    for kind in ("text", "text", "text", "text", "int4", "float8", "text", "text")
)
"""The arrays of :data:`JobRows`, each unnested (side by side: ``ROWS FROM``)."""


def _store(schema: str) -> str:
    """The ``WITH`` clause inserting :data:`JobRows`, the queue of each row stored as ``stored``."""
    return (
        f"WITH stored AS (INSERT INTO {quote_identifier(schema)}.jobs"
        " (uuid, queue, task, message, max_attempts, created_at, run_after, on_duplicate,"
        " dup_key) SELECT u, q, t, m, a, pg_catalog.statement_timestamp(),"
        " pg_catalog.statement_timestamp() + pg_catalog.make_interval(secs => d), o, k"
        f" FROM ROWS FROM ({_COLUMNS}) WITH ORDINALITY AS j(u, q, t, m, a, d, o, k, n)"
        " ORDER BY n ON CONFLICT DO NOTHING RETURNING queue)"
    )


_WAKE: Final = (
    f"SELECT pg_catalog.count(pg_catalog.pg_notify('{QUEUE_WAKEUP_CHANNEL}', queue))"
    f" FROM (SELECT DISTINCT queue FROM stored) AS woken WHERE {QUEUE_WAKEUP_IF_ROOM}"
)
"""One NOTIFY per queue that received a row of ``stored``: none while the server's NOTIFY
queue is half full or more (see :data:`~dispatcher.schema.QUEUE_WAKEUP_IF_ROOM`), so that
the jobs are stored still, found by polling, where the NOTIFY would fail the statement (in
the caller's transaction: its COMMIT)."""


def job_rows(jobs: Sequence[Submission], default_max_attempts: int) -> JobRows:
    """The columns of the rows storing *jobs* (see :data:`JobRows`)."""
    rows: JobRows = ([], [], [], [], [], [], [], [])
    uuids, queues, tasks, texts, attempts, delays, modes, keys = rows
    for job in jobs:
        message = job.message
        uuids.append(job.uuid)
        queues.append(job.channel)
        tasks.append(message["task"])
        texts.append(job.payloads[0])
        attempts.append(default_max_attempts if job.max_attempts is None else job.max_attempts)
        delays.append(float(message.get("delay") or 0))
        mode = message.get("on_duplicate")
        tracked = mode in TRACKED
        modes.append(mode if tracked else None)
        keys.append(duplicate_key(message) if tracked else None)
    return rows


class PgQueuePublisher:
    """Stores tasks as jobs of the durable queues of ``brokers.pg_queue``."""

    name = "pg_queue"

    def __init__(self, settings: PgQueueBroker, source: str = "config") -> None:
        self.settings = settings
        self.source = source
        self.queues: Collection[str] = frozenset(settings.queues)
        self.default_queue: str | None = settings.queues[0] if len(settings.queues) == 1 else None
        self.statement = insert_statement(settings.schema)
        self._together: dict[str, str] = {}

    def send_jobs(self, jobs: Sequence[Submission], connection: object | None = None) -> None:
        """Store *jobs* and wake the services, in one statement (see the module)."""
        if jobs:
            rows = job_rows(jobs, self.settings.max_attempts)
            store(self.settings.conninfo, self.settings.schema, self.statement, rows, connection)

    async def asend_jobs(
        self, jobs: Sequence[Submission], connection: object | None = None
    ) -> None:
        """:meth:`send_jobs` for asyncio code."""
        if jobs:
            rows = job_rows(jobs, self.settings.max_attempts)
            await astore(
                self.settings.conninfo, self.settings.schema, self.statement, rows, connection
            )

    def send_with_notifies(self, jobs: Sequence[Submission], messages: Sequence[Outgoing]) -> None:
        """Store *jobs* and NOTIFY *messages* on the SDK's own connection, in one statement.

        All or nothing: a ``batch()`` that spans this broker and pg_notify on one database.
        The NOTIFYs go out in order, with the queues' wake-ups. Never sent twice (its
        NOTIFYs would be): a connection lost under it fails the call, saying so.
        """
        statement, rows, params = self._with_notifies(jobs, messages)
        settings = self.settings
        schema = settings.schema
        store(settings.conninfo, schema, statement, rows, None, params, "the batch", resend=False)

    async def asend_with_notifies(
        self, jobs: Sequence[Submission], messages: Sequence[Outgoing]
    ) -> None:
        """:meth:`send_with_notifies` for asyncio code."""
        statement, rows, params = self._with_notifies(jobs, messages)
        settings = self.settings
        schema = settings.schema
        await astore(
            settings.conninfo, schema, statement, rows, None, params, "the batch", resend=False
        )

    def _with_notifies(
        self, jobs: Sequence[Submission], messages: Sequence[Outgoing]
    ) -> tuple[str, JobRows, Sequence[Any]]:
        """The statement, job rows and NOTIFY parameters of :meth:`send_with_notifies`."""
        query, params = notify_statement(messages)
        statement = self._together.get(query)
        if statement is None:  # one per notify statement (three at most), built once
            statement = insert_and_notify_statement(self.settings.schema, query)
            self._together[query] = statement
        return statement, job_rows(jobs, self.settings.max_attempts), params

    def send(self, messages: Sequence[Outgoing], connection: object | None = None) -> None:
        """Store task messages given as ``(queue, JSON text)``, with the queue's defaults."""
        self.send_jobs([self._as_job(queue, text) for queue, text in messages], connection)

    async def asend(self, messages: Sequence[Outgoing], connection: object | None = None) -> None:
        """:meth:`send` for asyncio code."""
        jobs = [self._as_job(queue, text) for queue, text in messages]
        await self.asend_jobs(jobs, connection)

    def control_with_reply(
        self,
        text: str,
        reply_to: str,
        replies: ReplyCollector,
        *,
        queue: str | None,
        expected_replies: int | None,
        timeout: float,
    ) -> None:
        """Refuse: control commands are not stored, they go through pg_notify or socket."""
        raise self._no_control()

    async def acontrol_with_reply(
        self,
        text: str,
        reply_to: str,
        replies: ReplyCollector,
        *,
        queue: str | None,
        expected_replies: int | None,
        timeout: float,
    ) -> None:
        """Refuse, as :meth:`control_with_reply`."""
        raise self._no_control()

    def _no_control(self) -> PublishError:
        return PublishError(
            "cannot send control commands through brokers.pg_queue (it stores tasks only): "
            f"configure brokers.pg_notify or brokers.socket in {self.source}, and "
            "publish.default_control_broker if several are"
        )

    def _as_job(self, queue: str, text: str) -> Submission:
        try:
            message = decode_json(text)
        except DecodeError as exc:
            raise PublishError(f"brokers.pg_queue stores task messages only: {exc}") from None
        if not isinstance(message, dict) or not isinstance(message.get("task"), str):
            raise PublishError("brokers.pg_queue stores task messages only (JSON text)")
        if not isinstance(message.get("uuid"), str):
            raise PublishError("brokers.pg_queue stores task messages with a uuid only")
        return Submission(message["uuid"], queue, message, (text,), durable=True)


def create(options: Mapping[str, Any], settings: Settings) -> PgQueuePublisher:
    """The factory of the pg_queue broker's publishing side."""
    if settings.brokers.pg_queue is None:
        raise PublishError(f"{settings.source} has no brokers.pg_queue")
    return PgQueuePublisher(settings.brokers.pg_queue, settings.source)

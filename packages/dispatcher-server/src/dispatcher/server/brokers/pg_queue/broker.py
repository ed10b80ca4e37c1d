"""The pg_queue broker: durable queues in a PostgreSQL table, shared by any number of hosts.

Jobs are rows (``{schema}.jobs``, created by ``dispatcherctl migrate``). A service claims
ready rows with ``FOR UPDATE SKIP LOCKED``, no more than it can start, under a lease it
renews while they run; it records each outcome in batches, fenced by the attempt number
(see :mod:`.sql`). Failed attempts are retried with a growing delay until ``max_attempts``,
then left ``failed``; rows whose service died are taken back when their lease runs out.
Delivery is at least once: a job runs again if its service dies while running it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import anyio
import psycopg
from anyio.abc import TaskStatus

from dispatcher.config import PgQueueBroker as PgQueueSettings
from dispatcher.schema import (
    MAX_NOTIFY_PAYLOAD_BYTES,
    QUEUE_WAKEUP_CHANNEL,
    duplicate_key,
    is_valid_channel_name,
    new_uuid,
    split_message,
)
from dispatcher.server.brokers.base import (
    BrokerBase,
    BrokerContext,
    BrokerNotReady,
    Capacity,
    Deliver,
    Settled,
    StartRefused,
)
from dispatcher.server.brokers.pg_queue import privileges
from dispatcher.server.brokers.pg_queue.acks import Acknowledger
from dispatcher.server.brokers.pg_queue.checks import check_tables
from dispatcher.server.brokers.pg_queue.claims import Claimer, ClaimOptions
from dispatcher.server.brokers.pg_queue.database import FAILURES, Connection, QueueDatabase, Rows
from dispatcher.server.brokers.pg_queue.leases import Leases
from dispatcher.server.brokers.pg_queue.limits import DeclaredAttempts, no_declared_limits
from dispatcher.server.brokers.pg_queue.migrations import (
    ASK,
    problem,
    version_queries,
)
from dispatcher.server.brokers.pg_queue.outcomes import RetryPolicy
from dispatcher.server.brokers.pg_queue.prefetch import Prefetch
from dispatcher.server.brokers.pg_queue.privileges import SCHEDULE, SETTLE, PrivilegeRefused
from dispatcher.server.brokers.pg_queue.sql import Statements
from dispatcher.server.brokers.pg_queue.upkeep import Upkeep
from dispatcher.server.brokers.pg_queue.wakeup import Wakeup, listen
from dispatcher.server.cancelling import execute_within
from dispatcher.server.log_arguments import named_list
from dispatcher.server.log_records import get_logger
from dispatcher.server.log_text import counted, first_line
from dispatcher.server.ratelimit import FailureLog
from dispatcher.server.stats import ServiceStats

logger = get_logger("dispatcher.pg_queue")

CLOSE_FLUSH_TIMEOUT: Final = 5.0
"""Seconds a write of outcomes may take once a stop began (those of the jobs that end
during the stop's grace, and at the end those still waiting). The first that takes longer
shows the database is not answering: the stop writes nothing more, so that it costs no
more than that; a database that answers gets every outcome written."""
_SERVER_UP_FOR: Final = (
    b"SELECT extract(epoch FROM pg_catalog.now() - pg_catalog.pg_postmaster_start_time())::float8"
)
"""Seconds since the database server started."""
_NOTIFY: Final = (
    b"SELECT pg_catalog.count(pg_catalog.pg_notify(c, p)) FROM ROWS FROM"
    b" (pg_catalog.unnest(%(channels)s::text[]), pg_catalog.unnest(%(payloads)s::text[]))"
    b" AS m(c, p)"
)
"""Sends a control reply's NOTIFYs (its chunks, in order) in one statement."""
TRACKED: Final = frozenset({"discard", "serial", "queue_one"})
"""The ``on_duplicate`` modes the table enforces (``parallel`` needs nothing)."""
LOCK_TIMEOUT: Final = 2.0
"""Most seconds a statement of the working connection waits for a row lock of another
session (and a sixth of the lease when that is shorter): an outcome whose row stays locked
is then written later (see :mod:`.acks`), and the renewals behind it are not held up."""


class PgQueueBroker(BrokerBase):
    """Claims, runs (through the service) and settles the jobs of ``brokers.pg_queue``."""

    def __init__(
        self,
        settings: PgQueueSettings,
        node_id: str,
        stats: ServiceStats,
        capacity: Capacity,
        *,
        listen_name: str,
        work_name: str,
        config_file: str | None,
        declared_attempts: Callable[[], Mapping[str, int]] = no_declared_limits,
        tables_checked: bool = True,
    ) -> None:
        """Build the broker (it connects once run).

        *tables_checked*: whether the start-up check of the tables could be made (see
        ``checks.check_tables``); if not, the first connection makes it (see
        :meth:`_check_tables`).
        """
        super().__init__("pg_queue")
        self.settings = settings
        self.queues = settings.queues
        self._config_file = config_file
        self._listen_name = listen_name
        self._stats = stats
        self._statements = statements = Statements.for_schema(settings.schema)
        # Claims have a connection of their own, so that a freed worker's next job never
        # waits behind acknowledgements and renewals (which share the other one).
        pooled = settings.transaction_pooler
        self._claims_db = QueueDatabase(
            settings.conninfo, work_name, self._on_open_claims, pooled=pooled, stats=stats
        )
        self._db = db = QueueDatabase(
            settings.conninfo,
            work_name,
            self._on_open,
            lock_timeout=min(LOCK_TIMEOUT, settings.lease / 6),
            pooled=pooled,
            stats=stats,
        )
        self._leases = leases = Leases(
            db, statements.renew, settings.lease, statements.renew_waiting
        )
        policy = RetryPolicy(
            settings.retry_backoff, settings.retry_backoff_max, settings.retry_jitter
        )
        self._wakeup = wakeup = Wakeup()
        self._limits = limits = DeclaredAttempts(declared_attempts, settings.max_attempts)
        self._acks = acks = Acknowledger(
            db,
            statements.acknowledge,
            leases,
            policy,
            settings.batch_size,
            stats,
            on_retry=wakeup.after,
            on_twin_free=wakeup.set,
            limits=limits,
        )
        self._prefetch = Prefetch(
            None if settings.prefetch == "auto" else settings.prefetch,
            busy_for=capacity.busy_for,
        )
        options = ClaimOptions(
            settings.queues,
            node_id,
            settings.lease,
            settings.poll_interval,
            settings.batch_size,
            self._prefetch.ahead,
        )
        self._claimer = Claimer(
            self._claims_db,
            statements.claim if len(settings.queues) > 1 else statements.claim_single,
            options,
            capacity,
            leases,
            acks,
            stats,
            limits,
            schema=settings.schema,
            work=db,
            quarantine=(
                statements.quarantine,
                statements.quarantine_check,
                statements.quarantine_fail,
            ),
        )
        self._upkeep = Upkeep(
            db,
            statements,
            leases,
            acks,
            stats,
            settings.lease,
            settings.keep_finished,
            settings.queues,
            schema=settings.schema,
            limits=limits,
            spare=self._claims_db,
            stopping=lambda: self._stopped,
        )
        self._ack_failures = FailureLog(logger)
        """Says why outcomes wait: once per cause (a minute apart while it lasts)."""
        self._opened: set[str] = set()
        """The connections (``work``, ``claims``) opened at least once: one opened again came
        back after it was lost, and may hold sweeps (see :meth:`_came_back`)."""
        self._stop_gave_up = False
        """A write of the stop took longer than :data:`CLOSE_FLUSH_TIMEOUT`: none follows."""
        self._tables_checked = tables_checked
        """Whether the tables were found fit once: until then, unfit tables stop the service."""

    async def run(
        self, deliver: Deliver, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Receive (see :class:`BrokerBase`), and keep the leases.

        Leases are renewed and acknowledgements written from the start until the service
        cancels this, past ``stop_receiving()``.
        """
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(self._upkeep.run, name="pg_queue:upkeep")
            await super().run(deliver, task_status=task_status)

    async def receive(
        self, deliver: Deliver, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen for wake-ups and claim jobs until ``stop_receiving()``.

        Not through a pooler in transaction mode (``transaction_pooler``): a LISTEN would stay
        on a server session the pooler lends to other clients (which would then get the
        wake-ups, while pgbouncer drops those that come when no client has the session), and
        none would reach this service. It claims every ``poll_interval`` seconds then.
        """
        task_status.started()  # connecting goes on in the background
        logger.info(
            "claiming jobs of queues %s (schema %s, %s)",
            named_list(self.queues),
            self.settings.schema,
            self._db.where,
        )
        if self.settings.transaction_pooler:
            logger.info(
                "not listening for wake-ups: brokers.pg_queue.transaction_pooler is true, and "
                "LISTEN needs a session of its own; jobs start within poll_interval (%g s)",
                self.settings.poll_interval,
            )
        async with anyio.create_task_group() as task_group:
            if not self.settings.transaction_pooler:
                task_group.start_soon(
                    listen,
                    self.settings.conninfo,
                    self._listen_name,
                    self.queues,
                    self._wakeup,
                    name="pg_queue:listen",
                )
            await self._claimer.run(deliver, self._wakeup)

    async def acknowledge(self, settled: Sequence[Settled]) -> None:
        """Record how these deliveries ended.

        When the database is away they are kept and written later; their leases are
        renewed meanwhile.
        """
        self._acks.add_settled(settled)
        self._prefetch.ran(item.ran for item in settled if item.ran is not None)
        if self._db.waiting:  # the database is away: the upkeep writes them once it is back
            self._acks.note_unwritten()
            return
        try:
            if self._stopped:  # a stop waits for no database: close() says what is left
                await self._write_while_stopping()
            else:
                await self._acks.flush()
        except FAILURES as exc:
            why = await privileges.explain(exc, self._db.fetch, self.settings.schema, SETTLE)
            self._ack_failures.log(
                why,
                "%s not recorded yet (%s); retrying",
                counted(self._acks.pending, "outcome"),
                why,
            )
        else:
            self._ack_failures.ended()

    def held_until(self, receipt: str) -> float:
        """Until when the job of *receipt* may start: its claim held, its lease not out."""
        # One of ours, made by the claim loop ("<id>:<attempts>:<claim>:<uuid>"): read
        # without parse_receipt's checks, twice for each job.
        parts = receipt.split(":", 3)
        try:
            return self._leases.held_until(int(parts[0]), int(parts[2]), parts[3])
        except (ValueError, IndexError):
            return 0.0

    async def submit_tick(
        self,
        task: str,
        tick: int,
        queue: str,
        message: dict[str, Any],
        max_attempts: int | None = None,
        *,
        former: Sequence[int] = (),
    ) -> bool:
        """Store a scheduled task's job unless a service already did for this tick.

        With the task's *max_attempts*, else the queue's.
        """
        message = {**message, "uuid": new_uuid(), "time_pub": time.time()}
        mode = message.get("on_duplicate")
        tracked = mode in TRACKED
        params = {
            "task": task,
            "ticks": list(dict.fromkeys([tick, *former])),
            "uuid": message["uuid"],
            "queue": queue,
            "message": json.dumps(message, separators=(",", ":")),
            "max_attempts": max_attempts or self.settings.max_attempts,
            "delay": float(message.get("delay") or 0),
            "on_duplicate": mode if tracked else None,
            "dup_key": duplicate_key(message) if tracked else None,
            "channel": QUEUE_WAKEUP_CHANNEL,
        }
        try:
            return bool(await self._db.fetch(self._statements.submit_tick, params))
        except psycopg.errors.InsufficientPrivilege as exc:
            why = await privileges.explain(exc, self._db.fetch, self.settings.schema, SCHEDULE)
            raise PrivilegeRefused(why) from None

    async def reply(self, reply_to: str, reply: Mapping[str, Any]) -> None:
        """NOTIFY *reply* on the channel *reply_to* (chunked when too large).

        On the working connection, in one statement: a connection of its own, opened by
        the first reply, could not be opened near ``max_connections``.
        """
        if not is_valid_channel_name(reply_to):
            return  # no channel can have that name: nobody waits for it
        text = json.dumps(reply, separators=(",", ":"), default=str)
        payloads = [text] if len(text) <= MAX_NOTIFY_PAYLOAD_BYTES else split_message(text)
        channels = [reply_to] * len(payloads)
        await self._db.fetch(_NOTIFY, {"channels": channels, "payloads": payloads})

    async def close(self) -> None:
        """Write what acknowledgements wait (briefly), then close the connections."""
        why: str | None = None
        try:
            await self._write_while_stopping(retry_locked=True)
        except FAILURES as exc:
            why = first_line(exc)
        if why is None and self._acks.pending:  # written, but for rows that stay locked
            why = "their rows are locked by another session"
        if self._stop_gave_up:
            why = f"the database did not answer a write within {CLOSE_FLUSH_TIMEOUT:g} s"
            if self._db.failing:  # not the database's silence: no connection could be made
                last = self._stats.pg_queue_last_error
                why = f"no connection could be made within {CLOSE_FLUSH_TIMEOUT:g} s: {last}"
        if why is not None and self._acks.pending:
            logger.warning(
                "%s not recorded (%s): their jobs will run again once their lease runs out",
                counted(self._acks.pending, "outcome"),
                why,
            )
        await self._claims_db.close()
        await self._db.close()

    async def _write_while_stopping(self, retry_locked: bool = False) -> None:
        """Write the outcomes waiting, within :data:`CLOSE_FLUSH_TIMEOUT` (see there).

        Those whose rows another session held locked are tried too when *retry_locked* (the
        last write, by :meth:`close`).
        """
        if self._stop_gave_up:
            return
        try:
            await self._acks.flush(CLOSE_FLUSH_TIMEOUT, retry_locked=retry_locked)
        except TimeoutError:
            self._stop_gave_up = True

    async def _on_open(self, conn: Connection) -> None:
        """A new working connection: check the tables (hold sweeps after an outage).

        See :meth:`_came_back`.
        """
        await self._check_tables(conn)
        # Its first open too: the claiming connection may not have come back yet.
        await self._came_back(conn, self._db)
        self._opened.add("work")

    async def _came_back(self, conn: Connection, db: QueueDatabase) -> None:
        """*db*'s connection *conn* opened again: hold sweeps if the outage may cost a lease.

        See ``Upkeep.hold_sweeps``. That is when the database could not be used (out of
        reach, read-only, not answering in time: the attempts failing) for longer than a
        third of the lease, or when its server started
        less than a lease ago: the outage may have cut every service off for long enough
        that a lease ran out (a service renews its leases every third of the lease). Not
        after a connection that was ended alone (an idle timeout, ``pg_terminate_backend()``)
        and opened again at once: holding sweeps then, each time, left the jobs of a dead
        service where they were.
        """
        lease = self.settings.lease
        reason: str | None = None
        if db.outage > lease / 3:
            reason = f"the database could not be used for {db.outage:.1f} s: {db.outage_cause}"
        else:
            row = await (await conn.execute(_SERVER_UP_FOR)).fetchone()
            if row is not None and row[0] is not None and row[0] < lease:
                reason = f"its server started {row[0]:.1f} s ago"
        if reason is not None:
            # Once per outage: both connections come back from it (the hold is extended).
            if not self._upkeep.sweeps_held():
                logger.info(
                    "taking back no expired lease for %g s (%s): the other services have "
                    "that long to come back and renew theirs",
                    lease,
                    reason,
                )
            self._upkeep.hold_sweeps()

    async def _on_open_claims(self, conn: Connection) -> None:
        """A new claiming connection: check the tables, then sweep what the dead left.

        This service's own leases are renewed first: reconnecting after an outage longer
        than the lease, the jobs it ran meanwhile (outcomes not written yet) are its own,
        not lost. Only the first connection sweeps at once, and not even it when it opens
        after an outage (a service started while the database was out of reach) or on a
        server that started less than a lease ago: one that came back from an outage
        leaves the other services of the database a lease to come back too (see
        :meth:`_came_back`).
        The upkeep sweeps only after that first sweep (claims, and so this, wait until the
        service knows its tasks' declared ``max_attempts``, which a sweep applies).
        """
        await self._check_tables(conn)

        async def fetch(statement: bytes, params: Mapping[str, Any]) -> Rows:
            return await execute_within(conn, statement, dict(params))  # (a renewal's limit)

        await self._leases.renew(fetch)
        await self._came_back(conn, self._claims_db)
        if "claims" not in self._opened:
            if not self._upkeep.sweeps_held():
                await self._upkeep.sweeper.run(fetch)
            self._upkeep.begin_sweeps()
        self._opened.add("claims")

    async def _check_tables(self, conn: Connection) -> None:
        """Raise :class:`BrokerNotReady` when the tables are missing or too old.

        Or when the role may no longer read their version: saying what to grant. Until the
        tables were found fit once (the database could not be reached at start, so that
        ``checks.check_tables`` could not check them), these are :class:`StartRefused`
        instead, which stop the service with exit status 2, as at start, and so is a role
        that lacks a privilege a service needs.
        """

        async def fetch(statement: bytes, params: Mapping[str, Any]) -> Rows:
            return await execute_within(conn, statement, dict(params))  # (a renewal's limit)

        refused = BrokerNotReady if self._tables_checked else StartRefused
        schema = self.settings.schema
        try:
            if not self._tables_checked:
                lacking = await privileges.lacking_async(fetch, schema, privileges.SERVICE)
                if lacking:
                    raise refused(lacking.described())
            found = await self._read_version(conn)
        except psycopg.errors.InsufficientPrivilege as exc:
            needs = (*privileges.REACH, *privileges.VERSION)
            why = await privileges.explain(exc, fetch, schema, needs)
            raise refused(why) from None
        refusal = problem(found, schema, self._config_file)
        if refusal is not None:
            raise refused(refusal)
        self._tables_checked = True

    async def _read_version(self, conn: Connection) -> int | None:
        """The version of the tables (see ``migrations.version_queries``); ``None``: none."""
        exists, version = version_queries(self.settings.schema)
        row = await (await conn.execute(exists.encode())).fetchone()
        found: int | None = (0 if row is None else int(row[0])) or None
        if found == ASK:
            row = await (await conn.execute(version.encode())).fetchone()
            found = 0 if row is None else int(row[0])
        return found


def create(options: Mapping[str, Any], context: BrokerContext) -> PgQueueBroker:
    """The factory of ``brokers.pg_queue`` (it reads the typed section of the settings).

    :raises BrokerNotReady: when the tables are missing or too old (when the database
        cannot be reached, the broker checks them once it can: see
        :meth:`PgQueueBroker._check_tables`).
    """
    settings = context.settings.brokers.pg_queue
    assert settings is not None, "the pg_queue factory is only called when it is configured"
    config_file = context.settings.file
    checked = check_tables(
        settings, config_file, schedules=bool(context.settings.producers.scheduled)
    )
    # Control clients count services by their connections' application_name: a service
    # has one such connection, pg_notify's when it has one, else this broker's listener.
    own_name = f"dispatcher-queue:{context.node_id}"[:63]
    has_notify = context.settings.brokers.pg_notify is not None
    return PgQueueBroker(
        settings,
        context.node_id,
        context.stats,
        context.capacity,
        listen_name=own_name if has_notify else context.application_name,
        work_name=own_name,
        config_file=config_file,
        declared_attempts=context.declared_attempts,
        tables_checked=checked,
    )

"""The pg_notify broker: one connection LISTENing on every configured channel.

Notifications are read straight from the connection: at each wake-up, as many as the
socket holds (each payload decoded once), rather than a few per wake-up.

It checks its own connection when no notification has arrived for a while, with a NOTIFY
round trip on a private channel; a connection that fails the check, or breaks, is replaced
after a backoff delay, and the channels are listened to again. The first retry comes fast
(0.1 s), since notifications sent while nobody listens are lost; the delay doubles while the
attempts fail, and while connections break again soon after they were opened. The
self-check's message is handled here and never delivered.

A connection whose server answers, but holds up or refuses the check's NOTIFY, is kept:
replacing it would not help, and notifications would be lost meanwhile. A NOTIFY held up
past ``self_check_timeout`` (every NOTIFY waits at commit for a cluster-wide lock, which a
committing NOTIFY holds: one waiting for a synchronous standby, say) is cancelled on the
server, and that logged, once a minute at most. One whose NOTIFY the server refuses (its
NOTIFY queue is full, say) answered as well: it is kept, and the server's error logged,
once a minute at most. Only a NOTIFY that
the cancel does not end in time has the connection replaced: its session may then stay on
the server, waiting, so the delays before the next connections keep growing while that
happens again, and listening sessions are ones the server ends once their client is gone
(``client_connection_check_interval``, where the server has it), lest they pile up.

Control replies go out on the listening connection, as NOTIFYs on their ``reply_to``
channel (a reply too large for one NOTIFY goes as chunk envelopes, in one statement): the
serving task sends them between two reads, as it sends the self-check, and a reply's NOTIFY
held up or refused is cancelled or given up as the check's is (the reply is lost, the
connection kept). They used to have a connection of their own, opened by the first reply:
near ``max_connections`` a service that listened (and so received the command) could not
open it, and every reply was lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Final

import anyio
import anyio.lowlevel
import psycopg
from anyio.abc import TaskStatus
from psycopg import sql

from dispatcher.config import PgNotifyBroker as PgNotifySettings
from dispatcher.publish import describe_server
from dispatcher.publish.connections import (
    NOTIFY_ONE,
    all_attempts,
    connection_options,
    describe_connection,
    notify_statement,
)
from dispatcher.schema import (
    MAX_NOTIFY_PAYLOAD_BYTES,
    is_valid_channel_name,
    service_application_name,
    split_message,
)
from dispatcher.server.backoff import FIRST_RETRY, HEALTHY_AFTER, MAX_RECONNECT, Backoff
from dispatcher.server.brokers.base import BrokerBase, BrokerContext, Deliver
from dispatcher.server.cancelling import CANCEL_WAIT, StatementStuck, execute_within
from dispatcher.server.log_arguments import named_list
from dispatcher.server.log_records import get_logger
from dispatcher.server.log_text import first_line
from dispatcher.server.origin import Origin
from dispatcher.server.ratelimit import FailureLog, RateLimitedLog
from dispatcher.server.resources import names_shortages
from dispatcher.server.stats import ServiceStats

logger = get_logger("dispatcher.listener")

MAX_PER_TURN: Final = 256
"""Notifications delivered in one go, before the other tasks of the service get a turn."""
REPLY_TIMEOUT: Final = 10.0
"""Seconds a control reply may wait for the listening connection to send it."""


@names_shortages  # (out of threads or file descriptors: an OSError, retried as one)
async def open_connection(conninfo: str, application_name: str) -> psycopg.AsyncConnection[Any]:
    """Open an autocommit connection for a broker.

    With a connect timeout, TCP keepalives and a bound on unacknowledged data, so that a
    silently dead server is noticed within about 20 s (see
    :data:`~dispatcher.publish.connections.LIVENESS`).
    """
    return await psycopg.AsyncConnection.connect(
        conninfo,
        autocommit=True,
        application_name=application_name,
        connect_timeout=10,
        **connection_options(conninfo),
    )


NEVER_IDLE_OUT: Final = (
    "SELECT pg_catalog.set_config(name, '0', false) FROM pg_catalog.pg_settings"
    " WHERE name = 'idle_session_timeout'"
)
"""Keeps a LISTEN session from being ended for idleness (PostgreSQL 14 and later): waiting
for notifications is all it does, and ``idle_session_timeout`` set on the role or the database
would cut it every few seconds, losing what is sent meanwhile."""


CLIENT_CHECK_INTERVAL: Final = "5s"
"""How often the server checks, while a statement of a LISTEN session runs, that the client
is still there (``client_connection_check_interval``, PostgreSQL 14 and later): a session
whose statement was held up (a NOTIFY waiting for its lock) and whose client gave up on it
then ends, rather than staying until the statement completes."""

SESSION_SETTINGS: Final = (
    "SELECT pg_catalog.set_config(name, CASE name WHEN 'idle_session_timeout' THEN '0'"
    f" ELSE '{CLIENT_CHECK_INTERVAL}' END, false) FROM pg_catalog.pg_settings"
    " WHERE name IN ('idle_session_timeout', 'client_connection_check_interval')"
)
""":data:`NEVER_IDLE_OUT`, and :data:`CLIENT_CHECK_INTERVAL` (refused on a server whose
platform cannot check: :data:`NEVER_IDLE_OUT` alone then)."""


async def start_listening(conn: psycopg.AsyncConnection[Any], channels: Iterable[str]) -> None:
    """LISTEN on *channels*, in a session that no ``idle_session_timeout`` ends.

    Its statements end when its client is gone, where the server can tell.
    """
    try:
        await conn.execute(SESSION_SETTINGS)
    except psycopg.errors.InvalidParameterValue:  # no client_connection_check_interval here
        await conn.execute(NEVER_IDLE_OUT)
    for channel in channels:
        await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))


class SelfCheckTimeout(TimeoutError):
    """The self-check's NOTIFY did not come back within ``self_check_timeout`` seconds."""

    def __init__(self, timeout: float) -> None:
        super().__init__(
            "the self-check round trip took longer than brokers.pg_notify.self_check_timeout "
            f"({timeout:g} s)"
        )


class SelfCheckStuck(SelfCheckTimeout):
    """The self-check's NOTIFY went on after the server was asked to cancel it.

    Its connection is closed; its session may stay on the server.
    """

    def __init__(self, timeout: float, cancel_wait: float) -> None:
        TimeoutError.__init__(
            self,
            "the self-check round trip took longer than brokers.pg_notify.self_check_timeout "
            f"({timeout:g} s), and its NOTIFY went on {cancel_wait:g} s after the server was "
            "asked to cancel it",
        )


def cancel_wait(timeout: float) -> float:
    """Seconds the server has to cancel a self-check's NOTIFY held up past *timeout*.

    As long as the self-check's timeout (a dead connection is replaced that much later),
    within 1 s and :data:`~dispatcher.server.cancelling.CANCEL_WAIT`.
    """
    return min(max(timeout, 1.0), CANCEL_WAIT)


SERVER_TROUBLE_WINDOW: Final = 60.0
"""Seconds in which one line at most says that the server held up or refused a self-check's
NOTIFY (the others are counted)."""

HELD_UP: Final = (
    "the self-check's NOTIFY on %s was held up on the server for more than "
    "brokers.pg_notify.self_check_timeout (%g s), and cancelled; the connection answered and "
    "is kept. Every NOTIFY waits at commit for a cluster-wide lock, which a transaction "
    "that sent one holds until its commit completes: one waiting for a synchronous standby "
    "(synchronous_standby_names set, the standby gone or behind; pg_stat_activity shows it "
    "with wait_event SyncRep, the others waiting with wait_event object), or for a slow "
    "disk. Notifications (tasks, control commands and replies) are held up meanwhile"
)

REFUSED: Final = "%s refused the self-check's NOTIFY (%s); the connection answered and is kept"

REFUSED_FULL: Final = (
    "%s refused the self-check's NOTIFY (%s): its NOTIFY queue is %.0f %% full "
    "(pg_notification_queue_usage() = %.3g). A session that LISTENs and stays in a "
    "transaction keeps it from being emptied (the server log names its PID: 'NOTIFY queue "
    "is ... full'); until it ends its transaction, every NOTIFY fails: tasks and control "
    "commands sent over pg_notify, control replies (durable queues' jobs are stored still, "
    "and found by polling). The connection answered and is kept"
)


class PgNotifyBroker(BrokerBase):
    """Receives notifications on ``brokers.pg_notify.channels``; replies with NOTIFY."""

    def __init__(
        self, settings: PgNotifySettings, application_name: str, stats: ServiceStats
    ) -> None:
        super().__init__("pg_notify")
        self.settings = settings
        self.application_name = application_name
        self.channels: Sequence[str] = settings.channels
        self.check_channel = f"dispatcher_check_{uuid.uuid4().hex[:16]}"
        self._origins = {channel: Origin("pg_notify", channel=channel) for channel in self.channels}
        self._stats = stats
        self._check_serial = 0
        self._listening = False
        """Whether a listening connection is being served (replies can go out on it)."""
        self._outbox: list[_Outgoing] = []
        """Replies waiting for the serving task to send them."""
        self._outbox_filled = anyio.Event()
        """Set when a reply was added to :attr:`_outbox`."""
        self._server_trouble = RateLimitedLog(
            logger, logging.WARNING, 1, window=SERVER_TROUBLE_WINDOW
        )

    async def receive(
        self, deliver: Deliver, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen until cancelled, reconnecting whenever the connection fails."""
        task_status.started()  # retries go on in the background
        backoff = Backoff(initial=FIRST_RETRY, maximum=MAX_RECONNECT)
        where = describe_server(self.settings.conninfo)
        connected_at: float | None = None
        failures = FailureLog(logger)
        while True:
            try:
                conn = await self._connect()
                try:
                    drain = _Drain(conn, self.check_channel, self._origins, deliver)
                    # What psycopg reads while a statement runs (LISTEN, the self-check)
                    # comes this way.
                    conn.add_notify_handler(drain.take)
                    await self._listen(conn)
                    reached = describe_connection(conn, self.settings.conninfo)
                    connected_at = time.monotonic()
                    failures.ended()
                    self._stats.listener_connects += 1
                    self._stats.broker(self.name).serving()
                    if self._stats.listener_connects == 1 and self.channels:
                        channels = named_list(self.channels)
                        logger.info("listening on channels %s (%s)", channels, reached)
                    elif self._stats.listener_connects == 1:
                        logger.info(
                            "listening on no channel (%s): brokers.pg_notify.channels is "
                            "empty, so no task nor control command comes this way",
                            reached,
                        )
                    else:
                        logger.info("reconnected to %s; listening again", reached)
                    self._listening = True
                    await self._serve(conn, drain)
                finally:
                    self._listening = False
                    self._fail_outbox("the listening connection was lost before it was sent")
                    with anyio.CancelScope(shield=True):  # closed even when cancelled
                        await conn.close()
            except (psycopg.Error, OSError, TimeoutError) as exc:
                # Not after a check left its session stuck on the server: the delays before
                # the next connections keep growing while that happens again.
                healthy = connected_at is not None and time.monotonic() - connected_at >= (
                    HEALTHY_AFTER
                )
                if healthy and not isinstance(exc, SelfCheckStuck):
                    backoff.reset()
                connected_at = None
                self._stats.listener_failures += 1
                delay = backoff.next_delay()
                reason = all_attempts(exc) or first_line(exc)
                self._stats.broker(self.name).failed(reason)
                failures.log(
                    reason,
                    "pg_notify connection to %s failed (%s); retrying in %.1f s",
                    where,
                    reason,
                    delay,
                )
                await anyio.sleep(delay)

    async def reply(self, reply_to: str, reply: Mapping[str, Any]) -> None:
        """NOTIFY *reply* on the channel *reply_to* (chunked when too large)."""
        if not is_valid_channel_name(reply_to):
            return  # no channel can have that name: nobody waits for it
        text = json.dumps(reply, separators=(",", ":"), default=str)
        payloads = [text] if len(text) <= MAX_NOTIFY_PAYLOAD_BYTES else split_message(text)
        if not self._listening:
            raise ConnectionError("no listening connection to send it on (reconnecting)")
        outgoing = _Outgoing([(reply_to, payload) for payload in payloads])
        self._outbox.append(outgoing)
        self._outbox_filled.set()
        with anyio.fail_after(REPLY_TIMEOUT):
            await outgoing.done.wait()
        if outgoing.error is not None:
            raise outgoing.error

    async def close(self) -> None:
        """Nothing to close: the replies go out on the listening connection."""

    def _fail_outbox(self, why: str) -> None:
        """Fail the replies waiting to be sent, saying *why*."""
        for outgoing in self._outbox:
            outgoing.finish(ConnectionError(why))
        self._outbox = []
        self._outbox_filled = anyio.Event()

    async def _send_replies(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Send the replies waiting, each in one statement (its chunks in order).

        Within ``self_check_timeout`` each, as the self-check's NOTIFY: one held up longer
        is cancelled, one the server refuses given up (the reply is lost, the connection
        kept).

        :raises StatementStuck: when a NOTIFY went on after the server was asked to cancel
            it (the connection is closed), and as psycopg does when the connection broke.
        """
        self._outbox_filled = anyio.Event()
        batch, self._outbox = self._outbox, []
        timeout = self.settings.self_check_timeout
        for n, outgoing in enumerate(batch):
            try:
                await execute_within(
                    conn,
                    *notify_statement(outgoing.messages),
                    timeout,
                    cancel_wait=cancel_wait(timeout),
                )
            except psycopg.Error as exc:
                if conn.broken or exc.sqlstate is None:
                    self._fail_batch(batch[n:], exc)
                    raise
                outgoing.finish(exc)  # held up and cancelled, or refused: this one only
                continue
            except BaseException as exc:
                self._fail_batch(batch[n:], exc)
                raise
            outgoing.finish(None)

    @staticmethod
    def _fail_batch(batch: list[_Outgoing], exc: BaseException) -> None:
        """Fail *batch* (sent or not: never again) for *exc*."""
        failure = exc if isinstance(exc, Exception) else ConnectionError("cancelled")
        for outgoing in batch:
            outgoing.finish(failure)

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        return await open_connection(self.settings.conninfo, self.application_name)

    async def _listen(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await start_listening(conn, (*self.channels, self.check_channel))

    async def _serve(self, conn: psycopg.AsyncConnection[Any], drain: _Drain) -> None:
        """Deliver notifications until the connection fails (or a self-check does)."""
        interval = self.settings.self_check_interval
        while True:
            with drain.watching():
                while (
                    not self._outbox
                    and (quiet_for := time.monotonic() - drain.last_heard) < interval
                ):
                    await _first_of(drain.failed, self._outbox_filled, interval - quiet_for)
                    drain.raise_failure()
            drain.raise_failure()  # (one on entering the block, its deadline already past)
            # Both need the socket to itself (psycopg reads it while a statement runs).
            if self._outbox:
                await self._send_replies(conn)
                continue
            await self._self_check(conn, drain)
            drain.last_heard = time.monotonic()

    async def _self_check(self, conn: psycopg.AsyncConnection[Any], drain: _Drain) -> None:
        """Send a NOTIFY to ourselves; raise :class:`SelfCheckTimeout` if it comes back late.

        A NOTIFY that the server holds up, or refuses, is no sign of a dead connection: the
        server answered (see the module).

        :raises SelfCheckStuck: when the NOTIFY is held up, and not cancelled in time.
        """
        self._check_serial += 1
        token = str(self._check_serial)
        started = time.monotonic()
        timeout = self.settings.self_check_timeout
        wait = cancel_wait(timeout)
        try:
            await execute_within(
                conn, NOTIFY_ONE, (self.check_channel, token), timeout, cancel_wait=wait
            )
        except psycopg.errors.QueryCanceled:
            self._server_trouble.log(HELD_UP, self._where(), timeout)
            return
        except StatementStuck:
            raise SelfCheckStuck(timeout, wait) from None
        except psycopg.Error as exc:
            if conn.broken or exc.sqlstate is None:
                raise
            await self._refused(conn, exc)
            return
        if time.monotonic() - started >= timeout:  # completed once asked to cancel
            self._server_trouble.log(HELD_UP, self._where(), timeout)
            return
        try:
            with anyio.fail_after(timeout - (time.monotonic() - started)):
                while True:
                    drain.run()
                    if drain.check_token == token:
                        break
                    await drain.wait()
        except TimeoutError:
            raise SelfCheckTimeout(timeout) from None
        took = time.monotonic() - started
        stats = self._stats
        stats.self_checks += 1
        stats.self_check_seconds += took
        stats.self_check_max_seconds = max(stats.self_check_max_seconds, took)
        logger.debug("self-check round trip %.1f ms", took * 1000)

    def _where(self) -> str:
        return describe_server(self.settings.conninfo)

    async def _refused(self, conn: psycopg.AsyncConnection[Any], exc: psycopg.Error) -> None:
        """Log that the server refused the self-check's NOTIFY (with the queue's usage if full)."""
        reason = f"{first_line(exc)}, SQLSTATE {exc.sqlstate}"
        if isinstance(exc, psycopg.errors.ProgramLimitExceeded):
            try:
                row = await (
                    await conn.execute("SELECT pg_catalog.pg_notification_queue_usage()")
                ).fetchone()
            except psycopg.Error:
                row = None
            if row is not None:
                usage = float(row[0])
                self._server_trouble.log(REFUSED_FULL, self._where(), reason, usage * 100, usage)
                return
        self._server_trouble.log(REFUSED, self._where(), reason)


class _Outgoing:
    """A control reply (its NOTIFYs) waiting for the listening connection to send it."""

    def __init__(self, messages: list[tuple[str, str]]) -> None:
        self.messages = messages
        self.done = anyio.Event()
        self.error: Exception | None = None

    def finish(self, error: Exception | None) -> None:
        """Sent (*error* ``None``), or not: wake the replier."""
        self.error = error
        self.done.set()


async def _first_of(first: anyio.Event, second: anyio.Event, timeout: float) -> None:
    """Return once either event is set, or after *timeout* seconds."""
    with anyio.move_on_after(timeout):
        async with anyio.create_task_group() as group:

            async def wait(event: anyio.Event) -> None:
                await event.wait()
                group.cancel_scope.cancel()

            group.start_soon(wait, first)
            group.start_soon(wait, second)


class _Drain:
    """Reads the notifications of one connection straight from libpq, many per wake-up.

    psycopg's ``notifies()`` waits for the socket once for every read, and a read brings
    16 kB at most: a few large notifications. Here a reader callback on the event loop (no
    task switch, no epoll registration per wake-up: this is the hot path) reads on while
    reads bring notifications, up to :data:`MAX_PER_TURN` of them before other callbacks
    get a turn, and each payload is decoded once.
    """

    def __init__(
        self,
        conn: psycopg.AsyncConnection[Any],
        check_channel: str,
        origins: Mapping[str, Origin],
        deliver: Deliver,
    ) -> None:
        self.fileno = conn.fileno()
        self._pgconn = conn.pgconn
        self._encoding = encoding = conn.info.encoding
        self._check_channel = check_channel
        self._check = check_channel.encode(encoding)
        self._origins = origins
        self._by_name = {name.encode(encoding): origin for name, origin in origins.items()}
        self._deliver = deliver
        self.check_token: str | None = None
        """The payload of the last self-check notification received."""
        self.more = False
        """The last :meth:`run` stopped at :data:`MAX_PER_TURN`: more may be waiting."""
        self.last_heard = time.monotonic()
        """When a notification last came (monotonic clock)."""
        self.failed = anyio.Event()
        """Set when reading failed: :meth:`raise_failure` raises why."""
        self._failure: Exception | None = None
        self._watching = False

    def run(self) -> int:
        """Read what the socket holds and deliver the notifications; return how many.

        :raises psycopg.OperationalError: when the connection is broken.
        """
        pgconn, handle = self._pgconn, self._handle
        delivered = 0
        while delivered < MAX_PER_TURN:
            pgconn.consume_input()  # one non-blocking read
            notify = pgconn.notifies()  # parses what has been read
            if notify is None:
                break
            while notify is not None:
                handle(notify.relname, notify.extra)
                delivered += 1
                notify = pgconn.notifies()
        self.more = delivered >= MAX_PER_TURN
        return delivered

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        """Deliver from a reader callback while in this block (the socket is ours then).

        :raises Exception: at once, what made reading fail before (see :meth:`raise_failure`).
        """
        self.raise_failure()  # never watch a socket number libpq has given up
        loop = asyncio.get_running_loop()
        loop.add_reader(self.fileno, self._on_readable)
        self._watching = True
        try:
            self._on_readable()  # what came while nobody watched
            yield
        finally:
            self._stop_watching()

    def _stop_watching(self) -> None:
        if self._watching:
            self._watching = False
            asyncio.get_running_loop().remove_reader(self.fileno)

    def raise_failure(self) -> None:
        """Raise what made reading fail, if it did."""
        if self._failure is not None:
            raise self._failure

    def _on_readable(self) -> None:
        if not self._watching or self._failure is not None:
            return
        try:
            if self.run():
                self.last_heard = time.monotonic()
        except Exception as exc:  # the connection broke: the serving task replaces it
            # At once: libpq has closed a broken connection's socket, and a socket opened
            # before the serving task resumes may get its number (and needs the loop's
            # reader slot for it).
            self._stop_watching()
            self._failure = exc
            self.failed.set()
            return
        if self.more:  # what libpq has already read would not wake the socket again
            asyncio.get_running_loop().call_soon(self._on_readable)

    async def wait(self) -> None:
        """Wait until the socket has more to read; only give others a turn if it has.

        (For the self-check, which reads between statements of its own.)
        """
        if self.more:
            await anyio.lowlevel.checkpoint()
        else:
            await anyio.wait_readable(self.fileno)

    def take(self, notify: psycopg.Notify) -> None:
        """Handle a notification psycopg read (and decoded) while a statement ran."""
        if notify.channel == self._check_channel:
            self.check_token = notify.payload
        else:
            self._deliver(notify.payload, self._origin(notify.channel))

    def _handle(self, channel: bytes, payload: bytes) -> None:
        text = payload.decode(self._encoding, "replace")
        origin = self._by_name.get(channel)
        if origin is not None:
            self._deliver(text, origin)
        elif channel == self._check:
            self.check_token = text
        else:
            self._deliver(text, self._origin(channel.decode(self._encoding, "replace")))

    def _origin(self, channel: str) -> Origin:
        origin = self._origins.get(channel)
        return Origin("pg_notify", channel=channel) if origin is None else origin


def create(options: Mapping[str, Any], context: BrokerContext) -> PgNotifyBroker:
    """The factory of ``brokers.pg_notify`` (it reads the typed section of the settings)."""
    settings = context.settings.brokers.pg_notify
    assert settings is not None, "the pg_notify factory is only called when it is configured"
    # Named after the node and its channels: a control client counts the services that will
    # get its command (those listening on the channel it sends on).
    name = service_application_name(context.node_id, settings.channels)
    return PgNotifyBroker(settings, name, context.stats)

"""The pg_notify broker: one connection LISTENing on every configured channel.

Notifications are read straight from the connection (:mod:`.drain`). The broker checks its
own connection when no notification has arrived for a while, with a NOTIFY round trip on a
private channel (:mod:`.self_check`); a connection that fails the check, or breaks, is
replaced after a backoff delay, and the channels are listened to again. The first retry
comes fast (0.1 s), since notifications sent while nobody listens are lost; the delay
doubles while the attempts fail, and while connections break again soon after they were
opened. Control replies go out on the listening connection (:mod:`.outbox`), those waiting
together in one statement (or a few).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Final

import anyio
import psycopg
from anyio.abc import TaskStatus

from dispatcher.config import PgNotifyBroker as PgNotifySettings
from dispatcher.publish import describe_server
from dispatcher.publish.broker_errors import all_attempts
from dispatcher.publish.server_description import describe_connection
from dispatcher.schema import (
    MAX_NOTIFY_PAYLOAD_BYTES,
    is_valid_channel_name,
    service_application_name,
    split_message,
)
from dispatcher.server.backoff import FIRST_RETRY, HEALTHY_AFTER, MAX_RECONNECT, Backoff
from dispatcher.server.brokers.base import BrokerBase, BrokerContext, BrokerNotReady, Deliver
from dispatcher.server.brokers.pg_connections import open_connection, start_listening
from dispatcher.server.brokers.pg_notify.drain import Drain
from dispatcher.server.brokers.pg_notify.neighbours import others_on, warn_of_others
from dispatcher.server.brokers.pg_notify.outbox import Outbox, Outgoing
from dispatcher.server.brokers.pg_notify.self_check import SelfCheck, SelfCheckStuck
from dispatcher.server.brokers.pooler_probe import check_notifications_arrive
from dispatcher.server.log_arguments import named_list
from dispatcher.server.log_records import get_logger
from dispatcher.server.log_text import first_line
from dispatcher.server.origin import Origin
from dispatcher.server.ratelimit import FailureLog
from dispatcher.server.stats import ServiceStats

logger = get_logger("dispatcher.listener")

LISTEN_REMEDY: Final = (
    "point brokers.pg_notify.conninfo of the services at PostgreSQL or a session-mode pool"
)
"""How a listener whose notifications a pooler loses is put right (see :mod:`.pooler_probe`)."""

REPLY_TIMEOUT: Final = 10.0
"""Seconds a control reply may wait for the listening connection to send it."""


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
        self._self_check = SelfCheck(settings, self.check_channel, stats)
        self._origins = {channel: Origin("pg_notify", channel=channel) for channel in self.channels}
        self._stats = stats
        self._listening = False
        """Whether a listening connection is being served (replies can go out on it)."""
        self._outbox = Outbox()
        """Replies waiting for the serving task to send them."""

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
                    drain = Drain(conn, self.check_channel, self._origins, deliver)
                    await check_notifications_arrive(  # (it reads its probe itself)
                        conn,
                        self.settings.conninfo,
                        self.check_channel,
                        self.settings.self_check_timeout,
                        LISTEN_REMEDY,
                    )
                    # What psycopg reads while a statement runs (LISTEN, the self-check)
                    # comes this way.
                    conn.add_notify_handler(drain.take)
                    await self._listen(conn)
                    if not self._stats.listener_connects and self.channels:
                        timeout = self.settings.self_check_timeout
                        warn_of_others(await others_on(conn, self.channels, timeout))
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
                    self._outbox.fail_all("the listening connection was lost before it was sent")
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
        [error] = await self.reply_batch([(reply_to, reply)])
        if error is not None:
            raise error

    async def reply_batch(
        self, replies: Sequence[tuple[str, Mapping[str, Any]]]
    ) -> list[Exception | None]:
        """NOTIFY each reply on its channel: as few statements as the outbox can make them.

        Each waits :data:`REPLY_TIMEOUT` s at most (then it fails with ``TimeoutError``).
        """
        errors: list[Exception | None] = [None] * len(replies)
        waiting: list[tuple[int, Outgoing]] = []
        for n, (reply_to, reply) in enumerate(replies):
            if not is_valid_channel_name(reply_to):
                continue  # no channel can have that name: nobody waits for it
            if not self._listening:
                errors[n] = ConnectionError("no listening connection to send it on (reconnecting)")
                continue
            text = json.dumps(reply, separators=(",", ":"), default=str)
            payloads = [text] if len(text) <= MAX_NOTIFY_PAYLOAD_BYTES else split_message(text)
            waiting.append((n, self._outbox.add([(reply_to, payload) for payload in payloads])))
        with anyio.move_on_after(REPLY_TIMEOUT):
            for _, outgoing in waiting:
                await outgoing.done.wait()
        for n, outgoing in waiting:
            if not outgoing.done.is_set():
                errors[n] = TimeoutError(
                    f"not sent within {REPLY_TIMEOUT:g} s: the listening connection is busy"
                )
            else:
                errors[n] = outgoing.error
        return errors

    async def close(self) -> None:
        """Nothing to close: the replies go out on the listening connection."""

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        return await open_connection(self.settings.conninfo, self.application_name)

    async def _listen(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await start_listening(conn, (*self.channels, self.check_channel))

    async def _serve(self, conn: psycopg.AsyncConnection[Any], drain: Drain) -> None:
        """Deliver notifications until the connection fails (or a self-check does)."""
        interval = self.settings.self_check_interval
        while True:
            with drain.watching():
                while (
                    not self._outbox
                    and (quiet_for := time.monotonic() - drain.last_heard) < interval
                ):
                    await _first_of(drain.failed, self._outbox.filled, interval - quiet_for)
                    drain.raise_failure()
            drain.raise_failure()  # (one on entering the block, its deadline already past)
            # Both need the socket to itself (psycopg reads it while a statement runs).
            if self._outbox:
                await self._outbox.send(conn, self.settings.self_check_timeout)
                continue
            await self._self_check.run(conn, drain)
            drain.last_heard = time.monotonic()


async def _first_of(first: anyio.Event, second: anyio.Event, timeout: float) -> None:
    """Return once either event is set, or after *timeout* seconds."""
    with anyio.move_on_after(timeout):
        async with anyio.create_task_group() as group:

            async def wait(event: anyio.Event) -> None:
                await event.wait()
                group.cancel_scope.cancel()

            group.start_soon(wait, first)
            group.start_soon(wait, second)


def create(options: Mapping[str, Any], context: BrokerContext) -> PgNotifyBroker:
    """The factory of ``brokers.pg_notify`` (it reads the typed section of the settings).

    :raises BrokerNotReady: when the section says its conninfo leads to a pooler in
        transaction mode: the broker LISTENs, and such a pooler would lose every
        notification (tasks, control commands) while lending the LISTENing server session
        to other clients.
    """
    settings = context.settings.brokers.pg_notify
    assert settings is not None, "the pg_notify factory is only called when it is configured"
    if settings.transaction_pooler:
        raise BrokerNotReady(
            f"brokers.pg_notify.transaction_pooler is true in {context.settings.source}: a "
            "service LISTENs on brokers.pg_notify.conninfo, and a pooler in transaction mode "
            "loses notifications (tasks and control commands would never reach it). Give "
            "the services a config whose brokers.pg_notify.conninfo leads to PostgreSQL or to "
            "a pool in session mode (transaction_pooler is for the publishers' config)"
        )
    # Named after the node and its channels: a control client counts the services that will
    # get its command (those listening on the channel it sends on).
    name = service_application_name(context.node_id, settings.channels)
    return PgNotifyBroker(settings, name, context.stats)

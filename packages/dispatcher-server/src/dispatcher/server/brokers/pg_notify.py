"""The pg_notify broker: one connection LISTENing on every configured channel.

It checks its own connection when no notification has arrived for a while, with a NOTIFY
round trip on a private channel; a connection that fails the check, or breaks, is replaced
after a backoff delay, and the channels are listened to again. The first retry comes fast
(0.1 s), since notifications sent while nobody listens are lost; the delay doubles while the
attempts fail, and while connections break again soon after they were opened. The
self-check's message is handled here and never delivered.

Control replies go out on a connection of their own (the listening one is busy), as NOTIFYs
on their ``reply_to`` channel; a reply too large for one NOTIFY goes as chunk envelopes.
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
from psycopg import sql

from dispatcher.config import PgNotifyBroker as PgNotifySettings
from dispatcher.publish import AsyncConnectionProvider, describe_server
from dispatcher.schema import MAX_NOTIFY_PAYLOAD_BYTES, is_valid_channel_name, split_message
from dispatcher.server.backoff import Backoff
from dispatcher.server.brokers.base import BrokerBase, BrokerContext, Deliver
from dispatcher.server.logsafe import first_line, get_logger
from dispatcher.server.origin import Origin
from dispatcher.server.stats import ServiceStats

logger = get_logger("dispatcher.listener")

FIRST_RETRY: Final = 0.1
"""Seconds before the first attempt to reconnect; doubled for each further one."""
MAX_RETRY: Final = 30.0
"""Longest wait between two attempts to reconnect, in seconds."""
HEALTHY_AFTER: Final = 5.0
"""Seconds a connection must have lasted for its loss to start the backoff afresh."""


async def open_connection(conninfo: str, application_name: str) -> psycopg.AsyncConnection[Any]:
    """Open an autocommit connection for a broker.

    With a connect timeout, and TCP keepalives so that a silently dead server is noticed
    within about a minute.
    """
    return await psycopg.AsyncConnection.connect(
        conninfo,
        autocommit=True,
        application_name=application_name,
        connect_timeout=10,
        keepalives=1,
        keepalives_idle=30,
        keepalives_interval=10,
        keepalives_count=3,
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
        self._replies = AsyncConnectionProvider(settings.conninfo)

    async def receive(
        self, deliver: Deliver, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen until cancelled, reconnecting whenever the connection fails."""
        task_status.started()  # retries go on in the background
        backoff = Backoff(initial=FIRST_RETRY, maximum=MAX_RETRY)
        where = describe_server(self.settings.conninfo)
        connected_at: float | None = None
        while True:
            try:
                async with await self._connect() as conn:
                    await self._listen(conn)
                    connected_at = time.monotonic()
                    self._stats.listener_connects += 1
                    if self._stats.listener_connects == 1:
                        channels = ", ".join(self.channels)
                        logger.info("listening on channels %s (%s)", channels, where)
                    else:
                        logger.info("reconnected to %s; listening again", where)
                    await self._serve(conn, deliver)
            except (psycopg.Error, OSError, TimeoutError) as exc:
                if connected_at is not None and time.monotonic() - connected_at >= HEALTHY_AFTER:
                    backoff.reset()
                connected_at = None
                self._stats.listener_failures += 1
                delay = backoff.next_delay()
                reason = first_line(exc)
                logger.warning(
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
        await self._replies.notify_many([reply_to] * len(payloads), payloads)

    async def close(self) -> None:
        """Close the connection replies are sent on."""
        await self._replies.close()

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        return await open_connection(self.settings.conninfo, self.application_name)

    async def _listen(self, conn: psycopg.AsyncConnection[Any]) -> None:
        for channel in (*self.channels, self.check_channel):
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))

    def _origin(self, channel: str) -> Origin:
        origin = self._origins.get(channel)
        return Origin("pg_notify", channel=channel) if origin is None else origin

    async def _serve(self, conn: psycopg.AsyncConnection[Any], deliver: Deliver) -> None:
        check_channel, origin = self.check_channel, self._origin
        interval = self.settings.self_check_interval
        last_heard = time.monotonic()
        while True:
            quiet_for = time.monotonic() - last_heard
            if quiet_for >= interval:
                await self._self_check(conn, deliver)
                last_heard = time.monotonic()
                continue
            async for notify in conn.notifies(timeout=interval - quiet_for):
                last_heard = time.monotonic()
                if notify.channel != check_channel:
                    deliver(notify.payload, origin(notify.channel))

    async def _self_check(self, conn: psycopg.AsyncConnection[Any], deliver: Deliver) -> None:
        """Send a NOTIFY to ourselves; raise TimeoutError if it does not come back in time."""
        self._check_serial += 1
        token = str(self._check_serial)
        started = time.monotonic()
        with anyio.fail_after(self.settings.self_check_timeout):
            await conn.execute("SELECT pg_notify(%s, %s)", (self.check_channel, token))
            while True:
                async for notify in conn.notifies(stop_after=1):
                    if notify.channel != self.check_channel:
                        deliver(notify.payload, self._origin(notify.channel))
                    elif notify.payload == token:
                        self._stats.self_checks += 1
                        elapsed = (time.monotonic() - started) * 1000
                        logger.debug("self-check round trip %.1f ms", elapsed)
                        return


def create(options: Mapping[str, Any], context: BrokerContext) -> PgNotifyBroker:
    """The factory of ``brokers.pg_notify`` (it reads the typed section of the settings)."""
    settings = context.settings.brokers.pg_notify
    assert settings is not None, "the pg_notify factory is only called when it is configured"
    return PgNotifyBroker(settings, context.application_name, context.stats)

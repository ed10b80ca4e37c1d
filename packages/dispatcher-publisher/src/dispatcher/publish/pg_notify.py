"""The pg_notify broker's publishing side: NOTIFY on a channel, LISTEN for control replies."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import psycopg

from dispatcher.config import PgNotifyBroker, Settings
from dispatcher.publish.brokers import Outgoing, ReplyCollector
from dispatcher.publish.caller_connections import in_transaction, in_use_here
from dispatcher.publish.connection_factory import ConnectionFactory
from dispatcher.publish.errors import PublishError
from dispatcher.publish.notify_async import acontrol_with_reply as acollect_replies
from dispatcher.publish.notify_async import asend as anotify
from dispatcher.publish.notify_sync import control_with_reply as collect_replies
from dispatcher.publish.notify_sync import send as notify
from dispatcher.publish.provider_registry_async import shared_provider as shared_async_provider
from dispatcher.publish.provider_registry_sync import shared_provider
from dispatcher.publish.server_description import describe_server


class PgNotifyPublisher:
    """Sends payloads with NOTIFY: on the SDK's own connection, or in the caller's transaction."""

    name = "pg_notify"

    def __init__(self, settings: PgNotifyBroker | None, source: str = "config") -> None:
        self.conninfo = None if settings is None else settings.conninfo
        self.source = source
        self.queues: tuple[str, ...] = () if settings is None else settings.channels
        self.default_queue: str | None = None
        self._factory: ConnectionFactory | None = None
        self._async_factory: ConnectionFactory | None = None
        self._pooled = settings is not None and settings.transaction_pooler
        """Whether the conninfo leads to a pooler in transaction mode: no reply comes back."""
        if settings is not None:
            self.default_queue = settings.default_publish_channel
            if self.default_queue is None and len(settings.channels) == 1:
                self.default_queue = settings.channels[0]
            key = "brokers.pg_notify."
            if settings.connection_factory is not None:
                self._factory = ConnectionFactory(
                    f"{key}connection_factory",
                    settings.connection_factory,
                    settings.conninfo,
                    psycopg.Connection,
                )
            if settings.async_connection_factory is not None:
                self._async_factory = ConnectionFactory(
                    f"{key}async_connection_factory",
                    settings.async_connection_factory,
                    settings.conninfo,
                    psycopg.AsyncConnection,
                )

    def send(self, messages: Sequence[Outgoing], connection: object | None = None) -> None:
        """NOTIFY each payload on its channel, in one statement.

        On *connection*, else on the one ``connection_factory`` returns, else on the SDK's own.
        """
        if connection is None and self._factory is not None:
            factory = self._factory
            application = factory.connection()
            if (
                self.conninfo is not None
                and isinstance(application, psycopg.Connection)
                and in_use_here(application)
                and not in_transaction(application)
            ):
                # A signal handler (or a __del__) interrupted its thread's statement on the
                # application's connection, in no transaction: sent at once either way.
                shared_provider(self.conninfo).notify(messages)
                return
            notify(self.conninfo, messages, application, factory.whose)
        elif connection is None and self.conninfo is not None:
            shared_provider(self.conninfo).notify(messages)  # the common case, directly
        else:
            notify(self._conninfo(connection), messages, connection)

    def own_database(self) -> str | None:
        """The conninfo :meth:`send` sends on when given no connection, if the SDK's own.

        ``None`` when ``connection_factory`` gives the application's connection instead, or
        no conninfo is configured.
        """
        return self.conninfo if self._factory is None else None

    def aown_database(self) -> str | None:
        """:meth:`own_database` for :meth:`asend` (``async_connection_factory``)."""
        return self.conninfo if self._async_factory is None else None

    def send_own(self, messages: Sequence[Outgoing]) -> None:
        """NOTIFY on the SDK's own connection, never the application's (``connection_factory``).

        For what must act at once, whatever the application's transaction does: a control
        command, a task sent when that transaction has committed.
        """
        shared_provider(self._own_conninfo()).notify(messages)

    async def asend_own(self, messages: Sequence[Outgoing]) -> None:
        """:meth:`send_own` for asyncio code."""
        await shared_async_provider(self._own_conninfo()).notify(messages)

    async def asend(self, messages: Sequence[Outgoing], connection: object | None = None) -> None:
        """:meth:`send` for asyncio code (with ``async_connection_factory``)."""
        if connection is None and self._async_factory is not None:
            factory = self._async_factory
            await anotify(self.conninfo, messages, await factory.aconnection(), factory.whose)
        elif connection is None and self.conninfo is not None:
            await shared_async_provider(self.conninfo).notify(messages)
        else:
            await anotify(self._conninfo(connection), messages, connection)

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
        """NOTIFY the command, LISTEN on *reply_to* for the services' replies."""
        conninfo, channel = self._control_target(queue)
        collect_replies(
            conninfo,
            channel,
            text,
            reply_to,
            replies,
            expected_replies=expected_replies,
            timeout=timeout,
        )

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
        """:meth:`control_with_reply` for asyncio code."""
        conninfo, channel = self._control_target(queue)
        await acollect_replies(
            conninfo,
            channel,
            text,
            reply_to,
            replies,
            expected_replies=expected_replies,
            timeout=timeout,
        )

    def _conninfo(self, connection: object | None) -> str | None:
        if connection is None and self.conninfo is None:
            raise PublishError(
                f"cannot submit tasks: {self.source} configures no brokers.pg_notify "
                "(its conninfo is needed), and no connection= was passed"
            )
        return self.conninfo

    def _own_conninfo(self) -> str:
        if self.conninfo is None:
            raise PublishError(
                f"cannot send control commands: {self.source} has no brokers.pg_notify"
            )
        return self.conninfo

    def _control_target(self, queue: str | None) -> tuple[str, str]:
        """The conninfo and channel of a command whose replies are waited for.

        Refused through a pooler in transaction mode: the replies' LISTEN would be made on a
        server session the pooler lends to other clients between statements, and no reply
        would come (the command looked unanswered, the services alive).
        """
        conninfo = self._own_conninfo()
        if self._pooled:
            raise PublishError(
                f"cannot wait for control replies through {describe_server(conninfo)}: "
                f"brokers.pg_notify.transaction_pooler in {self.source} says it is a pooler in "
                "transaction mode, which loses them (LISTEN needs a session of its own); "
                "use a config whose brokers.pg_notify.conninfo leads to PostgreSQL or to a "
                "pool in session mode"
            )
        channel = queue or self.default_queue
        if channel is None:
            raise PublishError(
                "cannot send control commands: no channel; set brokers.pg_notify."
                f"default_publish_channel in {self.source}, or pass queue=..."
            )
        return self._own_conninfo(), channel


def create(options: Mapping[str, Any], settings: Settings) -> PgNotifyPublisher:
    """The factory of the pg_notify broker's publishing side."""
    return PgNotifyPublisher(settings.brokers.pg_notify, settings.source)

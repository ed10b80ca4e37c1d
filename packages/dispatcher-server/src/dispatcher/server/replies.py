"""Publishing control replies on their ``reply_to`` channel, off the hot path.

Replies are queued by the (synchronous) intake and sent by one task on a connection of their
own: the listener's connection is busy listening. A reply too large for one NOTIFY goes as
chunk envelopes, like any message.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import psycopg
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from dispatcher.publish.chunking import split_message
from dispatcher.publish.errors import PublishError
from dispatcher.publish.submit_async import AsyncConnectionProvider
from dispatcher.schema import MAX_NOTIFY_PAYLOAD_BYTES
from dispatcher.server.logsafe import get_logger

logger = get_logger("dispatcher.replies")

MAX_PENDING_REPLIES = 1000


class ReplySender:
    """Sends control replies over pg_notify, in the order they were queued."""

    def __init__(self, conninfo: str) -> None:
        self._provider = AsyncConnectionProvider(conninfo)
        self._send: MemoryObjectSendStream[tuple[str, dict[str, Any]]]
        self._receive: MemoryObjectReceiveStream[tuple[str, dict[str, Any]]]
        self._send, self._receive = anyio.create_memory_object_stream(MAX_PENDING_REPLIES)

    def queue(self, channel: str, reply: dict[str, Any]) -> None:
        """Queue *reply* for *channel*; dropped (and logged) if too many are pending."""
        try:
            self._send.send_nowait((channel, reply))
        except anyio.WouldBlock:
            logger.warning("too many control replies pending: dropped the reply to %s", channel)

    async def run(self) -> None:
        """Send queued replies until cancelled."""
        try:
            async for channel, reply in self._receive:
                text = json.dumps(reply, separators=(",", ":"), default=str)
                payloads = [text] if len(text) <= MAX_NOTIFY_PAYLOAD_BYTES else split_message(text)
                try:
                    await self._provider.notify_many([channel] * len(payloads), payloads)
                except (psycopg.Error, OSError, PublishError) as exc:
                    logger.warning("could not send a control reply to %s: %s", channel, exc)
        finally:
            with anyio.CancelScope(shield=True):
                await self._provider.close()

"""Control replies, off the hot path: queued by the (synchronous) intake, sent by the brokers.

Each broker gets a bounded queue and a task of its own that awaits ``broker.reply()`` for
each reply in turn, so a slow or broken broker delays only its own replies. A reply that
cannot be queued or sent is dropped, with a (rate-limited) log line.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Final

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from dispatcher.server.brokers.base import Broker
from dispatcher.server.log_records import get_logger
from dispatcher.server.log_text import first_line
from dispatcher.server.ratelimit import RateLimitedLog

logger = get_logger("dispatcher.replies")

MAX_PENDING_REPLIES: Final = 1000
"""Replies waiting to be sent, per broker; more are dropped."""

_Item = tuple[str, Mapping[str, Any]]
_Streams = tuple[MemoryObjectSendStream[_Item], MemoryObjectReceiveStream[_Item]]


class ReplyRouter:
    """Sends each control reply through the broker its message came from."""

    def __init__(self, brokers: Sequence[Broker], max_pending: int = MAX_PENDING_REPLIES) -> None:
        self._brokers = {broker.name: broker for broker in brokers}
        self._max_pending = max_pending
        self._streams: dict[str, _Streams] = {}
        """The queues, by broker name: made by :meth:`run` (replies follow deliveries)."""
        self._drops = RateLimitedLog(logger, logging.WARNING)
        self._failures = RateLimitedLog(logger, logging.WARNING)

    def send(self, broker: str, reply_to: str, reply: Mapping[str, Any]) -> None:
        """Queue *reply* for *reply_to* over *broker*; never blocks, never raises."""
        streams = self._streams.get(broker)
        if streams is None:
            self._drops.log("no broker %s to send the reply to %s through", broker, reply_to)
            return
        try:
            streams[0].send_nowait((reply_to, reply))
        except anyio.WouldBlock:
            self._drops.log(
                "too many control replies pending on %s: dropped the reply to %s",
                broker,
                reply_to,
            )

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Send queued replies until cancelled."""
        for name in self._brokers:
            self._streams[name] = anyio.create_memory_object_stream[_Item](self._max_pending)
        try:
            async with anyio.create_task_group() as group:
                for name, broker in self._brokers.items():
                    queued = self._streams[name][1]
                    group.start_soon(self._send_all, broker, queued, name=f"replies:{name}")
                task_status.started()
        finally:
            for send, receive in self._streams.values():
                send.close()
                receive.close()
            self._streams = {}

    async def _send_all(self, broker: Broker, queued: MemoryObjectReceiveStream[_Item]) -> None:
        async for reply_to, reply in queued:
            try:
                await broker.reply(reply_to, reply)
            except Exception as exc:  # a broker's failure costs this reply only
                reason = first_line(exc)
                self._failures.log(
                    "could not send a control reply to %s over %s: %s",
                    reply_to,
                    broker.name,
                    reason,
                )

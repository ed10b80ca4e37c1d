"""Control replies, off the hot path: queued by the (synchronous) intake, sent by the brokers.

Each broker gets a bounded queue and a task of its own that awaits ``broker.reply()`` for
each reply in turn, so a slow or broken broker delays only its own replies. A broker that
can send many replies in one go (:class:`~dispatcher.server.brokers.base.ReplyingInBatches`,
such as pg_notify) is handed every reply waiting at once instead: a burst of commands (and
the refusals of those over a limit) is answered in a round trip or a few, not one round trip
per reply, each waiting for those before it. A reply that cannot be queued or sent is
dropped, with a (rate-limited) log line.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Final

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from dispatcher.server.brokers.base import Broker, ReplyingInBatches
from dispatcher.server.log_records import get_logger
from dispatcher.server.log_text import first_line
from dispatcher.server.ratelimit import RateLimitedLog

logger = get_logger("dispatcher.replies")

MAX_PENDING_REPLIES: Final = 1000
"""Replies waiting to be sent, per broker; more are dropped."""

MAX_REPLIES_AT_ONCE: Final = 256
"""Replies a broker that sends them in batches is handed at once, at most."""

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
        in_batches = isinstance(broker, ReplyingInBatches)
        async for first in queued:
            batch = [first]
            while in_batches and len(batch) < MAX_REPLIES_AT_ONCE:
                try:
                    batch.append(queued.receive_nowait())
                except anyio.WouldBlock:
                    break
            if len(batch) > 1 and isinstance(broker, ReplyingInBatches):
                await self._send_batch(broker, broker.name, batch)
                continue
            reply_to, reply = first
            try:
                await broker.reply(reply_to, reply)
            except Exception as exc:  # a broker's failure costs this reply only
                self._failed(broker.name, reply_to, exc)

    async def _send_batch(self, broker: ReplyingInBatches, name: str, batch: list[_Item]) -> None:
        try:
            errors = await broker.reply_batch(batch)
        except Exception as exc:  # a broker's failure costs this batch only
            errors = [exc] * len(batch)
        for (reply_to, _), error in zip(batch, errors, strict=False):
            if error is not None:
                self._failed(name, reply_to, error)

    def _failed(self, broker: str, reply_to: str, exc: Exception) -> None:
        self._failures.log(
            "could not send a control reply to %s over %s: %s", reply_to, broker, first_line(exc)
        )

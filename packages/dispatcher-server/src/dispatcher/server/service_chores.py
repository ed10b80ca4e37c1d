"""The service's periodic chores while it serves, each a task that runs until cancelled.

Incomplete chunked messages expire; the rate-limited logs say, every second, how many lines
they held back.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Protocol

import anyio

from dispatcher.server.log_records import get_logger
from dispatcher.server.ratelimit import flush_suppressed

logger = get_logger("dispatcher.service")


class ExpiringChunks(Protocol):
    """The intake's chunked messages being put together."""

    def expire(self) -> Iterable[str]:
        """Drop the messages whose chunks came too long ago; their ids."""


async def expire_chunks(
    chunks: ExpiringChunks, chunk_expiry: float, rejected: Counter[str]
) -> None:
    """Expire incomplete chunked messages, counting each in *rejected*.

    Every tenth of *chunk_expiry*, within 1 s and 60 s.
    """
    while True:
        await anyio.sleep(max(1.0, min(60.0, chunk_expiry / 10)))
        for message_id in chunks.expire():
            rejected["chunk_expired"] += 1
            logger.warning("incomplete chunked message %s expired", message_id)


async def flush_suppressed_lines() -> None:
    """Have the rate-limited logs say what they held back, every second."""
    while True:
        await anyio.sleep(1.0)
        flush_suppressed()

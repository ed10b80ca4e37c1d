"""Hold task messages until the first worker says which tasks are registered.

Until then no message can be checked against the registered names; those that arrive wait,
within a number and a size, and are released (or given back) all together.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any, Final

from dispatcher.config import Limits
from dispatcher.server.origin import Origin
from dispatcher.server.rejection import Rejected

MAX_WAITING_FOR_WORKERS: Final = 100_000
"""Messages held while the first worker starts (until the registered names are known)."""

Waiting = tuple[dict[str, Any], str, str, Origin]
"""A message held: ``(message, payload, channel, origin)``."""


class WaitingForWorkers:
    """The task messages held until the registered task names are known."""

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._waiting: deque[Waiting] = deque()
        self._waiting_bytes = 0

    def __len__(self) -> int:
        return len(self._waiting)

    def hold(self, message: dict[str, Any], payload: str, channel: str, origin: Origin) -> None:
        """Hold a task until the first worker says which tasks are registered.

        :raises Rejected: (``overloaded``) when too many, or too many bytes, are held.
        """
        uuid = message.get("uuid")
        if len(self._waiting) >= MAX_WAITING_FOR_WORKERS:
            raise Rejected("overloaded", "too many messages while workers start", uuid)
        size = len(payload)
        if self._waiting_bytes + size > self._limits.max_held_bytes:
            limit = self._limits.max_held_bytes
            raise Rejected(
                "overloaded",
                f"service.limits.max_held_bytes ({limit}) reached while workers start",
                uuid,
            )
        self._waiting_bytes += size
        self._waiting.append((message, payload, channel, origin))

    def release(self) -> Iterator[Waiting]:
        """Each message held, in the order they came, no longer held once yielded."""
        self._waiting_bytes = 0
        while self._waiting:
            yield self._waiting.popleft()

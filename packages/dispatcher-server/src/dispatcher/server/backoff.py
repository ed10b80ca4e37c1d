"""Delays between retries: doubling, capped, with jitter."""

from __future__ import annotations

import random
from typing import Final

FIRST_RETRY: Final = 0.1
"""Seconds before the first attempt to reconnect (to a database, or to run a broker again
after it failed); doubled for each further one."""
MAX_RETRY: Final = 30.0
"""Longest wait between two such attempts, in seconds."""
MAX_RECONNECT: Final = 5.0
"""Longest wait between two attempts to reconnect a service's database connections (the
listeners', the durable queue's), in seconds: a service is back at most that long after its
database (a failover, a restart), however long the outage; a server that is down gets one
attempt per connection every 5 s."""
HEALTHY_AFTER: Final = 5.0
"""Seconds a connection (or a broker's run) must have lasted for its loss to start the
backoff afresh."""


class Backoff:
    """Yields retry delays ``initial, 2*initial, ...``, each +-10 %, never above ``maximum``.

    The jitter of a delay at the cap only shortens it: "up to" the cap holds.
    """

    def __init__(self, initial: float = 0.5, maximum: float = 30.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self.attempts = 0

    def next_delay(self) -> float:
        """Return the delay before the next attempt, and count the attempt."""
        base: float = min(self.maximum, self.initial * 2.0**self.attempts)
        self.attempts += 1
        return min(self.maximum, base * random.uniform(0.9, 1.1))

    def reset(self) -> None:
        """Start again from the initial delay (after a success)."""
        self.attempts = 0

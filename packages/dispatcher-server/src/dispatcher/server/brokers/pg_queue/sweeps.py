"""Taking back the rows whose lease ran out: their service died, or lost the database.

A batch of rows per statement (``sql_sweeps.SWEEP``), but for the queue_one rows that go back to
wait: each of those is taken back by a statement of its own (``sql_sweeps.SWEEP_ALONE``), which
waits briefly for an identical job that a transaction still open has stored (its entry in
the unique index of waiting queue_one jobs holds the row until that transaction ends). Such
a row is left as it is until the next sweep; the others never wait for it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import psycopg

from dispatcher.server.brokers.pg_queue.database import Rows
from dispatcher.server.brokers.pg_queue.limits import NO_LIMITS, DeclaredAttempts
from dispatcher.server.log_records import get_logger
from dispatcher.server.log_text import counted
from dispatcher.server.stats import ServiceStats

logger = get_logger("dispatcher.pg_queue")

Fetch = Callable[[bytes, Mapping[str, Any]], Awaitable[Rows]]

BATCH: Final = 1000
"""Rows taken back per statement."""

ALONE_LOCK_WAIT: Final = 0.05
"""Most seconds the statement taking back a queue_one row alone waits for a transaction
that holds an identical job (a thirtieth of the lease when that is shorter)."""

ALONE_TRIES: Final = 2
"""Statements that try to take back one queue_one row: the second after an identical job
was committed once the first began (its unique index refused the first: the second sees
that job, and cancels the row)."""


class Sweeper:
    """Takes back expired leases with the statements *sweep* and *alone* (see the module).

    A row with the queue's default ``max_attempts`` goes by its task's declared one
    (*limits*). Each row taken back is counted in *stats* (by queue).
    """

    def __init__(
        self,
        sweep: bytes,
        alone: bytes,
        lease: float,
        stats: ServiceStats,
        *,
        limits: DeclaredAttempts | None = None,
    ) -> None:
        self._sweep = sweep
        self._alone = alone
        self._limits = limits
        self._stats = stats
        self._lock_wait = f"{max(1, round(min(ALONE_LOCK_WAIT, lease / 30) * 1000))}ms"
        self._held: set[int] = set()
        """The rows said to be held by an identical job of a transaction still open."""

    async def run(self, fetch: Fetch, deadline: float = float("inf")) -> int:
        """Take back every row whose lease ran out; return how many.

        Or as many as there is time for before the :func:`time.monotonic` *deadline*.
        """
        params = {"limit": BATCH, **(NO_LIMITS if self._limits is None else self._limits.params())}
        states: dict[str, int] = {}
        held: list[int] = []
        while time.monotonic() < deadline:
            rows = await fetch(self._sweep, params)
            taken = [(queue, state) for queue, state, _ in rows if state is not None]
            for row in (row for _, state, row in rows if state is None):
                if time.monotonic() >= deadline:
                    break
                alone = await self._take_alone(fetch, params, row)
                if alone is None:
                    held.append(row)
                taken += ((queue, state) for queue, state, _ in alone or ())
            for queue, state in taken:
                self._stats.pg_queue_lease_expiries[queue] += 1
                if state == "failed":
                    self._stats.pg_queue_failures[queue] += 1
                states[state] = states.get(state, 0) + 1
            if len(rows) < BATCH or not taken:  # (a batch of rows held only: the next sweep)
                break
        self._say(states, held)
        return sum(states.values())

    async def _take_alone(self, fetch: Fetch, params: Mapping[str, Any], row: int) -> Rows | None:
        """Take back the queue_one *row*; return it (queue, new state, id) if taken.

        No row when it was no longer to take back (renewed, or taken by another service,
        meanwhile); ``None`` when an identical job stored by a transaction still open
        holds it.
        """
        alone = {**params, "limit": 1, "id": row, "lock_wait": self._lock_wait}
        for _ in range(ALONE_TRIES):
            try:
                found = await fetch(self._alone, alone)
            except psycopg.errors.UniqueViolation:
                continue  # an identical job was committed meanwhile: the next try sees it
            except psycopg.errors.LockNotAvailable:
                break
            self._held.discard(row)
            return found
        return None

    def _say(self, states: Mapping[str, int], held: list[int]) -> None:
        """Log what a sweep took back, and the rows held (each once while it is held)."""
        total = sum(states.values())
        if total:
            failed = states.get("failed", 0)
            cancelled = states.get("cancelled", 0)
            logger.warning(
                "the leases of %s ran out (not renewed: their service stopped, or could not "
                "reach the database): %d waiting again, %d failed with no attempt left%s",
                counted(total, "job"),
                total - failed - cancelled,
                failed,
                f", {cancelled} cancelled (an identical queue_one job waits)" if cancelled else "",
            )
        new = [row for row in held if row not in self._held]
        self._held.intersection_update(held)
        self._held.update(new)
        if new:
            logger.info(
                "%s not taken back yet: an identical queue_one job is stored by a "
                "transaction still open (it waits again, or is cancelled, once that "
                "transaction ends): job%s %s",
                counted(len(new), "lost lease"),
                "s" if len(new) > 1 else "",
                ", ".join(str(row) for row in new),
            )

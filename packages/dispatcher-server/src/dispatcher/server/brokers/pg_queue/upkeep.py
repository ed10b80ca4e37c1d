"""The pg_queue broker's periodic work: renew leases, retry acknowledgements, sweep, purge.

- every ``lease / 3`` seconds: write acknowledgements still waiting, renew held leases;
- every ``lease / 2`` seconds (and on each new connection): sweep rows whose lease ran
  out back to the queue (or to ``failed`` when no attempt is left);
- every minute (or every ``keep_finished`` seconds, when shorter; at most every lease/3):
  delete finished rows older than ``keep_finished``, and schedule ticks older than an
  hour, in small batches.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import anyio

from dispatcher.server.brokers.pg_queue.acks import Acknowledger
from dispatcher.server.brokers.pg_queue.database import FAILURES, QueueDatabase, Rows
from dispatcher.server.brokers.pg_queue.leases import Leases
from dispatcher.server.brokers.pg_queue.sql import Statements
from dispatcher.server.logsafe import first_line, get_logger
from dispatcher.server.ratelimit import RateLimitedLog
from dispatcher.server.stats import ServiceStats

logger = get_logger("dispatcher.pg_queue")

Fetch = Callable[[bytes, Mapping[str, Any]], Awaitable[Rows]]

BATCH: Final = 1000
"""Rows swept or deleted per statement."""
PURGE_EVERY: Final = 60.0
"""Seconds between purges of finished rows."""
KEEP_TICKS: Final = 3600.0
"""Seconds a schedule tick is remembered (long after every service has seen it)."""


async def sweep(fetch: Fetch, statement: bytes, stats: ServiceStats) -> int:
    """Take back every row whose lease ran out; return how many."""
    total = failed = 0
    while True:
        rows = await fetch(statement, {"limit": BATCH})
        for queue, state in rows:
            stats.pg_queue_lease_expiries[queue] += 1
            if state == "failed":
                stats.pg_queue_failures[queue] += 1
                failed += 1
        total += len(rows)
        if len(rows) < BATCH:
            break
    if total:
        logger.warning(
            "pg_queue: the leases of %d jobs ran out (their service died or lost the "
            "database): %d waiting again, %d failed with no attempt left",
            total,
            total - failed,
            failed,
        )
    return total


class Upkeep:
    """Runs the periodic work until cancelled; see the module docstring."""

    def __init__(
        self,
        db: QueueDatabase,
        statements: Statements,
        leases: Leases,
        acks: Acknowledger,
        stats: ServiceStats,
        lease: float,
        keep_finished: float,
    ) -> None:
        self._db = db
        self._statements = statements
        self._leases = leases
        self._acks = acks
        self._stats = stats
        self._lease = lease
        self._keep_finished = keep_finished
        self._failures = RateLimitedLog(logger, logging.WARNING)

    async def run(self) -> None:
        """Do each piece of work when due, until cancelled."""
        purge_every = min(PURGE_EVERY, self._keep_finished)
        now = time.monotonic()
        next_sweep, next_purge = now + self._lease / 2, now + purge_every
        while True:
            await anyio.sleep(self._lease / 3)
            # Each step on its own: a failing flush must never cost the renewal of leases.
            await self._attempt(self._leases.renew)
            await self._attempt(self._acks.flush)
            now = time.monotonic()
            if now >= next_sweep:
                next_sweep = now + self._lease / 2
                await self._attempt(self._sweep)
            if now >= next_purge:
                next_purge = now + purge_every
                await self._attempt(self.purge)

    async def _attempt(self, step: Callable[[], Awaitable[object]]) -> None:
        try:
            await step()
        except FAILURES as exc:
            self._failures.log("pg_queue: upkeep failed: %s", first_line(exc))

    async def _sweep(self) -> None:
        await sweep(self._db.fetch, self._statements.sweep, self._stats)

    async def purge(self) -> None:
        """Delete old finished rows and old schedule ticks, a batch per statement."""
        for statement, keep in (
            *((purge, self._keep_finished) for purge in self._statements.purge),
            (self._statements.purge_ticks, KEEP_TICKS),
        ):
            while True:
                rows = await self._db.fetch(statement, {"keep": keep, "limit": BATCH})
                if len(rows) < BATCH:
                    break

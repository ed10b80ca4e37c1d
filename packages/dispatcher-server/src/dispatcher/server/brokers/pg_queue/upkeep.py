"""The pg_queue broker's periodic work: renew leases, retry acknowledgements, sweep, purge.

- every ``lease / 3`` seconds: write acknowledgements still waiting, renew held leases (on
  the claiming connection while the working one cannot be opened); in between, every
  second, the acknowledgements a failure left unwritten, once the database is back;
- every ``lease / 2`` seconds (and on each new connection): sweep rows whose lease ran
  out back to the queue (or to ``failed`` when no attempt is left), but only right after
  this service's own leases were renewed: after an outage longer than the lease, its own
  rows (jobs running, or whose outcome is not written yet) are never taken for lost. The
  first sweep is the claiming connection's, when it first opens: claims wait until the
  service knows its tasks, and so the ``max_attempts`` they declare, which a sweep applies
  (see :mod:`.limits`); none comes from here before it;
- every minute (or every ``keep_finished`` seconds, when shorter; at most every lease/3):
  delete the finished rows of the queues this service serves older than its
  ``keep_finished`` (those of other queues are left to the services serving them, which
  may keep them longer), and schedule ticks older than an hour, in small batches.

A round's sweep and purge stop after ``lease / 3`` seconds of work between them (each
statement started before then runs to its end), and go on at the next round (the purge
without waiting for its minute): however many rows are due at once (millions,
after ``keep_finished`` was lowered), leases are renewed on time, so that no job this
service runs is taken for lost and run elsewhere meanwhile.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

import anyio

from dispatcher.server.brokers.base import TICK_OFFER_WINDOW
from dispatcher.server.brokers.pg_queue.acks import Acknowledger
from dispatcher.server.brokers.pg_queue.database import FAILURES, QueueDatabase, Rows
from dispatcher.server.brokers.pg_queue.leases import RENEW_LIMIT, Leases
from dispatcher.server.brokers.pg_queue.limits import DeclaredAttempts
from dispatcher.server.brokers.pg_queue.privileges import PURGE, SETTLE, Need, explain
from dispatcher.server.brokers.pg_queue.sql import Statements
from dispatcher.server.brokers.pg_queue.sweeps import Sweeper
from dispatcher.server.log_records import get_logger
from dispatcher.server.log_text import first_line
from dispatcher.server.ratelimit import FailureLog
from dispatcher.server.stats import ServiceStats

logger = get_logger("dispatcher.pg_queue")

RENEWALS: Final = "renewals"
"""The part of the broker that renews leases, as its health names it (see ``BrokerHealth``)."""

Fetch = Callable[[bytes, Mapping[str, Any]], Awaitable[Rows]]

BATCH: Final = 1000
"""Rows deleted per statement."""
PURGE_EVERY: Final = 60.0
"""Seconds between purges of finished rows."""
OUTCOME_RETRY: Final = 1.0
"""Seconds between two tries, between rounds, of the outcomes a failure left unwritten."""
KEEP_TICKS: Final = 2 * TICK_OFFER_WINDOW
"""Seconds a schedule tick is remembered (an hour): twice as long as any service may still
offer it (:data:`~dispatcher.server.brokers.base.TICK_OFFER_WINDOW`), so that a service
that offers it late (it was cut off from the database meanwhile) finds it taken."""


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
        queues: Sequence[str],
        *,
        schema: str | None = None,
        limits: DeclaredAttempts | None = None,
        spare: QueueDatabase | None = None,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self._db = db
        self._stopping = stopping
        """Whether the service stops: the stop writes the last outcomes itself, each write
        given a few seconds (see ``broker.CLOSE_FLUSH_TIMEOUT``), and none is tried here."""
        self._spare = spare
        """The claiming connection: leases are renewed on it while *db* cannot connect."""
        self._schema = schema
        """The tables' schema: a step refused a privilege says what to grant on it."""
        self._statements = statements
        self._leases = leases
        self._acks = acks
        self._lease = lease
        self._keep_finished = keep_finished
        self._queues = list(queues)
        """The queues whose finished rows this service purges: those it serves."""
        self._stats = stats
        self._last_failure = ""
        """Why the last step that failed failed (one line)."""
        self._failures: dict[str, FailureLog] = {}
        """Says why each step fails: once per cause (a minute apart while it lasts)."""
        self._sweeps_from = 0.0
        """No sweep before this (``time.monotonic()``): see :meth:`hold_sweeps`."""
        self.sweeper = Sweeper(
            statements.sweep, statements.sweep_alone, lease, stats, limits=limits
        )
        """Takes back the expired leases (the claiming connection's first sweep too)."""
        self._swept = False
        """The claiming connection swept first (see :meth:`begin_sweeps`)."""

    def begin_sweeps(self) -> None:
        """The claiming connection swept, on its first open: sweep from now on too.

        It opens once the service knows its tasks (and the limits they declare).
        """
        self._swept = True

    def hold_sweeps(self) -> None:
        """Sweep no other service's leases for one lease from now.

        Said when a connection comes back after an outage long enough to cost a lease: it
        may have cut off every service of the database, and those coming back later must
        have the time to renew their own leases (their jobs ran meanwhile) before anyone
        takes them for dead.
        """
        self._sweeps_from = time.monotonic() + self._lease

    async def run(self) -> None:
        """Do each piece of work when due, until cancelled."""
        purge_every = min(PURGE_EVERY, self._keep_finished)
        now = time.monotonic()
        next_sweep, next_purge = now + self._lease / 2, now + purge_every
        budget = self._lease / 3
        while True:
            await self._pause(budget)
            # Each step on its own: a failing flush must never cost the renewal of leases.
            reaches_database = bool(self._leases.held)
            renewed = await self._attempt("renewal of leases", SETTLE, self._renew)
            if reaches_database:
                self._tell_health(renewed is not None)
            await self._attempt("writing of outcomes", SETTLE, self._acks.flush_all)
            now = time.monotonic()
            deadline = now + budget  # one for the sweep and the purge: renewals stay on time
            # Never sweep before this service's own leases are renewed: after a long outage
            # they ran out too, and the jobs it ran meanwhile are not lost, only unrecorded.
            if now >= next_sweep and renewed and self._swept and not self.sweeps_held():
                next_sweep = now + self._lease / 2
                await self._attempt("sweep of lost leases", SETTLE, self._sweep, deadline)
            if now >= next_purge:
                finished = await self._attempt(
                    "purge of finished jobs", PURGE, self.purge, deadline
                )
                next_purge = now if finished is False else now + purge_every

    def _tell_health(self, renewed: bool) -> None:
        """Say whether the broker serves, as a renewal of leases found it.

        While every worker is busy no claim runs, and the renewals of the leases of the
        jobs they run are what finds the database away (``/readyz``, ``status``).
        """
        health = self._stats.broker("pg_queue")
        if renewed:
            health.serving(by=RENEWALS)
        else:
            health.failed(f"renewal of leases failed: {self._last_failure}", by=RENEWALS)

    async def _pause(self, seconds: float) -> None:
        """Wait *seconds*, until the next round, writing the outcomes a failure left unwritten.

        Those of jobs that ended while the database was away, once it is back: tried every
        :data:`OUTCOME_RETRY` seconds, unless the working connection waits out a reconnect
        delay, each write given until the round is due. An idle service otherwise left them
        for its next round, a third of the lease later (minutes, for a long lease), their
        jobs ``running`` in the table meanwhile and their serial twins waiting. Those whose
        rows another session holds locked are left to the rounds.
        """
        until = time.monotonic() + seconds
        while (left := until - time.monotonic()) > 0:
            if not self._acks.unwritten:
                await self._acks.wait_unwritten(left)
                continue
            await anyio.sleep(min(left, OUTCOME_RETRY))
            if self._stopping():
                continue
            if time.monotonic() < until and self._acks.unwritten and not self._db.waiting:
                write = functools.partial(self._write_unwritten, until)
                await self._attempt("writing of outcomes", SETTLE, write)

    async def _write_unwritten(self, until: float) -> None:
        """Write the outcomes waiting (those of locked rows aside), by *until* at the latest."""
        await self._acks.flush(max(until - time.monotonic(), 0.1))

    async def _attempt(
        self,
        what: str,
        needs: Sequence[Need],
        step: Callable[..., Awaitable[object]],
        *args: float,
    ) -> object | None:
        """Run *step*; log its failure, naming it (*what*).

        A privilege it *needs* refused, the line says what to grant.
        """
        lines = self._failures.get(what)
        if lines is None:
            lines = self._failures[what] = FailureLog(logger)
        try:
            if not args:
                done = await step()
                lines.ended()
                return done
            # A sweep or a purge: its statements stop being started at the deadline; one
            # the database does not answer (a partition) is given up a renewal's time later,
            # so that the next renewal of the leases is not held up.
            limit = args[0] - time.monotonic() + min(self._lease / 3, RENEW_LIMIT)
            with anyio.move_on_after(max(limit, 0.0)):
                done = await step(*args)
                lines.ended()
                return done
            raise TimeoutError(f"the database did not answer within {max(limit, 0.0):.3g} s")
        except FAILURES as exc:
            if self._schema is None:
                why = first_line(exc)
            else:
                why = await explain(exc, self._db.fetch, self._schema, needs)
            lines.log(why, "%s failed: %s", what, why)
            self._last_failure = why
            return None

    async def _renew(self) -> bool:
        """Renew the leases held; on the claiming connection when the working one is lost.

        The claim loop claims nothing while the working connection cannot be opened, but the
        jobs claimed before it was lost still run: their leases are kept if the claiming
        connection can keep them (their outcomes wait for the working connection).
        """
        try:
            await self._leases.renew()
        except FAILURES:
            spare = self._spare
            # Not while the claiming connection waits to reconnect too (the next renewal
            # would wait for it); its own reconnect delays grow apart from the working
            # one's, so that after an outage the first of them to get through renews.
            if spare is None or not self._db.failing or spare.reconnect_in > 0:
                raise
            await self._leases.renew(spare.fetch)
        return True

    async def _sweep(self, deadline: float) -> None:
        async def fetch(statement: bytes, params: Mapping[str, Any]) -> Rows:
            # Asked again once the connection is open: the sweep that opens it after an
            # outage is the one that learns sweeps must wait (see hold_sweeps).
            return await self._db.fetch(
                statement, params, unless=self.sweeps_held, cancel_safely=True
            )

        await self.sweeper.run(fetch, deadline)

    def sweeps_held(self) -> bool:
        """Whether sweeps wait now (see :meth:`hold_sweeps`)."""
        return time.monotonic() < self._sweeps_from

    async def purge(self, deadline: float = float("inf")) -> bool:
        """Delete the old finished rows of the queues this service serves, and old ticks.

        A batch per statement at a time, until none is left, or the :func:`time.monotonic`
        *deadline* has passed; returns whether none is left.
        """
        finished: dict[str, object] = {
            "keep": self._keep_finished,
            "queues": self._queues,
            "limit": BATCH,
        }
        ticks: dict[str, object] = {"keep": KEEP_TICKS, "limit": BATCH}
        for statement, params in (
            *((purge, finished) for purge in self._statements.purge),
            (self._statements.purge_ticks, ticks),
        ):
            while True:
                if time.monotonic() >= deadline:
                    return False
                rows = await self._db.fetch(statement, params, cancel_safely=True)
                if len(rows) < BATCH:
                    break
        return True

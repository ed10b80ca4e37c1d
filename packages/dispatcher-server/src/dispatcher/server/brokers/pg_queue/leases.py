"""The claims a service holds: kept alive by one statement for all, until acknowledged."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Final

import anyio
import psycopg

from dispatcher.server.brokers.pg_queue.database import QueueDatabase, Reconnecting, Rows
from dispatcher.server.brokers.pg_queue.outcomes import Ack
from dispatcher.server.log_arguments import Phrase
from dispatcher.server.log_records import get_logger
from dispatcher.server.log_text import counted

logger = get_logger("dispatcher.pg_queue")

Fetch = Callable[[bytes, Mapping[str, Any]], Awaitable[Rows]]
Deliver = Callable[[Any], None]

MAX_NAMED: Final = 20
"""Jobs named in one line about rows locked by another transaction (the count says the rest)."""

LOCK_WAIT: Final = 0.05
"""Most seconds a renewal waits for the rows it found locked, once it renewed the others
(see ``sql_outcomes.RENEW_WAITING``); a thirtieth of the lease when that is shorter. A
claim or a sweep of another service may hold a row it met as it changed (just claimed, or
renewed) until that statement ends, milliseconds (see ``sql_outcomes.RENEW``): waited for,
not taken for a lock that lasts."""

HELD_BRIEFLY: Final = (
    "a claim or a sweep of a service of this queue that met a row as it changed holds it "
    "until that statement ends; an operator's or an application's transaction until it ends"
)
"""Who holds a row that a renewal found locked for a moment, in the log."""

RENEW_LIMIT: Final = 30.0
"""Most seconds a renewal may take, as a write of outcomes (``acks.WRITE_LIMIT``); a third of
the lease when that is shorter."""


class Leases:
    """Rows claimed by this service and not yet acknowledged: ``id -> (attempt, claim)``.

    A claim is fenced by both numbers the row had when it was claimed (both in the
    delivery's receipt): its attempt and its claim number (the row's ``claims``, which
    counts every claim and is never reset, not even by ``dispatcherctl retry``), and by its
    job's uuid (a failover that lost a row may give its id to another job).
    """

    def __init__(
        self,
        db: QueueDatabase,
        statement: bytes,
        lease: float,
        waiting: bytes = b"",
        lock_wait: float | None = None,
    ) -> None:
        """Renew through *db* with *statement* (``sql_outcomes.RENEW``), for *lease* seconds.

        *waiting* (``sql_outcomes.RENEW_WAITING``; none: not tried) renews at once the rows
        *statement* found locked, waiting *lock_wait* seconds at most for each (default:
        :data:`LOCK_WAIT`, a thirtieth of the lease when that is shorter).
        """
        if lock_wait is None:
            lock_wait = min(LOCK_WAIT, lease / 30)
        self._db = db
        self._statement = statement
        self._lease = lease
        self._waiting = waiting
        self._lock_wait = f"{max(1, round(lock_wait * 1000))}ms"
        self.held: dict[int, tuple[int, int]] = {}
        """Each claimed row's id, and the attempt and claim number it was claimed as."""
        self._uuids: dict[int, str] = {}
        """Each claimed row's id, and the uuid of the job it was claimed with."""
        self._confirmed: dict[int, float] = {}
        """Each claimed row's id, and when (``time.monotonic()``) the statement that last
        granted its lease was sent: the lease runs at least ``lease`` seconds from then."""
        self._delivered: dict[tuple[int, str], int] = {}
        """Each job (row, uuid) delivered to the service whose outcome is not written yet (it
        runs, waits for a worker, or has ended and its outcome waits to be written), with the
        claim number it was delivered with (kept when the lease is lost: the outcome still
        comes, and is logged if refused). Two jobs may have one row: a failover lost the row
        of the first, and gave its id to the second."""
        self._adopted: dict[tuple[int, str], tuple[int, int]] = {}
        """A delivered job (row, uuid) whose row was claimed again meanwhile, and the attempt
        and claim number of that later claim: the one its outcome settles."""
        self._writing: set[tuple[int, str]] = set()
        """The delivered jobs (row, uuid) whose outcome is being written (see :meth:`settling`)."""
        self._locked: set[int] = set()
        """The held rows found locked by another transaction at the last renewal (said once)."""
        self._at_risk: set[int] = set()
        """Those of them whose lease was said to be at risk of running out (said once)."""
        self._parked: dict[tuple[int, str], tuple[int, int, Deliver, Any]] = {}
        """A job (row, uuid) claimed again while its outcome was being written: the later
        claim's attempt, claim number, delivery and what to deliver, until the write says
        which it is."""

    def add(
        self,
        row: int,
        attempts: int,
        claim: int,
        sent: float,
        uuid: str,
        deliver: Deliver | None = None,
        claimed: Any = None,
    ) -> bool:
        """A row was claimed as attempt *attempts*, its claim number *claim*: hold it.

        *sent* is when (``time.monotonic()``) the claiming statement was sent; *uuid* is its
        job's. Returns whether to deliver it: not when this service still has the row's job
        from an earlier claim whose outcome is not written yet (its lease ran out and the row
        was taken back meanwhile, a partition, say; or a failover lost the last writes and
        the row went back in time, so that this claim may even have the same numbers as the
        earlier one): the new claim is adopted, settled by that copy's outcome (see
        :meth:`settling`), so that the service never runs two copies of one job, whatever
        the numbers say. While that outcome is being written, the claim may as well be a new
        attempt (a retry the write just recorded): *deliver*, if given, is called with *claimed*
        then, when the write turns out to have been recorded (see :meth:`release`).

        A row of another job (another uuid: a failover lost the row, and its id was given
        again) is delivered; the earlier job's outcome, which names its uuid, settles only
        its own claim (refused by the database now), never the other job's.
        """
        self.held[row] = (attempts, claim)
        self._uuids[row] = uuid
        self._confirmed[row] = sent
        key = (row, uuid)
        if key not in self._delivered:
            self._delivered[key] = claim
            return True
        if deliver is not None and key in self._writing:
            self._parked[key] = (attempts, claim, deliver, claimed)
        else:
            self._adopt(key, attempts, claim)
        return False

    def _adopt(self, key: tuple[int, str], attempts: int, claim: int) -> None:
        """The delivered job *key* (row, uuid) was claimed again: its outcome settles *claim*."""
        self._adopted[key] = (attempts, claim)
        row, uuid = key
        logger.warning(
            "job %d (uuid %s) claimed again (attempt %d) while this service still has it "
            "from an earlier claim, which the database no longer had (its lease ran out, an "
            "operator changed the row, or a failover lost the last writes): not started "
            "twice; the earlier copy's outcome settles the new claim",
            row,
            uuid,
            attempts,
        )

    def settling(self, acks: Iterable[Ack]) -> list[Ack]:
        """*acks*, the outcomes of delivered claims, as they are written now.

        An outcome whose row was claimed again meanwhile (see :meth:`add`) settles that
        later claim, with its attempt and claim number, instead of being refused. Its row
        counts as delivered until :meth:`release` (after the write).
        """
        written: list[Ack] = []
        for ack in acks:
            key = (ack.id, ack.uuid)
            if self._delivered.get(key) == ack.claim:
                self._writing.add(key)
                adopted = self._adopted.get(key) if self._adopted else None
                if adopted is not None:
                    ack = ack._replace(attempts=adopted[0], claim=adopted[1])
            written.append(ack)
        return written

    def unwritten(self, acks: Iterable[Ack]) -> None:
        """The write of *acks* (from :meth:`settling`) failed: they wait for the next one.

        A row claimed again meanwhile is adopted: the outcome is not known to be written.
        """
        for ack in acks:
            key = (ack.id, ack.uuid)
            self._writing.discard(key)
            parked = self._parked.pop(key, None)
            if parked is not None and key in self._delivered:
                self._adopt(key, *parked[:2])

    def held_until(self, row: int, claim: int, uuid: str) -> float:
        """Until when (``time.monotonic()``) the claim of *row* numbered *claim* surely holds.

        Past that time the lease may have run out (the service was stopped, or could not
        renew it): another service may have taken the row back, so its job must not start.
        ``0.0`` when the claim is not held (any more); *uuid* is its job's.
        """
        key = (row, uuid)
        adopted = self._adopted.get(key) if self._adopted else None
        if adopted is not None and self._delivered.get(key) == claim:
            claim = adopted[1]  # claimed again meanwhile: that claim holds the row
        held = self.held.get(row)
        if held is None or held[1] != claim or self._uuids[row] != uuid:
            return 0.0
        return self._confirmed[row] + self._lease

    def release(self, ack: Ack, refused: bool = False) -> str | None:
        """*ack* (from :meth:`settling`) was written, *refused* by the fence or not.

        Stop renewing the claim it settles and return its job's uuid; ``None`` when the
        write was refused because this service claimed the row again meanwhile: the outcome,
        which now settles that claim, is to be written again. A row claimed again after a
        recorded write (a retry put it back) is delivered now. A later claim is kept.
        """
        row = ack.id
        key = (row, ack.uuid)
        self._writing.discard(key)
        entry = self._delivered.get(key)
        parked = self._parked.pop(key, None) if self._parked else None
        if refused:
            if parked is not None and entry is not None:
                self._adopt(key, *parked[:2])
            adopted = self._adopted.get(key) if self._adopted else None
            if adopted is not None and adopted[1] != ack.claim:
                return None
        if entry is not None:
            del self._delivered[key]
        if self._adopted:
            self._adopted.pop(key, None)
        held = self.held.get(row)
        if held is not None and held[1] == ack.claim and self._uuids[row] == ack.uuid:
            del self.held[row]
            del self._uuids[row]
            del self._confirmed[row]
            self._locked.discard(row)
            self._at_risk.discard(row)
        if parked is not None and not refused:
            _, claim, deliver, claimed = parked
            self._delivered[key] = claim
            deliver(claimed)
        return "?" if entry is None else ack.uuid

    @property
    def renew_limit(self) -> float:
        """Seconds a renewal may take: a third of the lease, at most :data:`RENEW_LIMIT`.

        A renewal given up then leaves time for another before the lease runs out.
        """
        return min(self._lease / 3, RENEW_LIMIT)

    def uuid(self, row: int) -> str:
        """The uuid of the job *row* is claimed with (``"?"``: not known)."""
        return self._uuids.get(row, "?")

    async def renew(self, fetch: Fetch | None = None) -> None:
        """Extend every held lease, in one statement (through *fetch*, default the db's).

        A claim the database no longer has as ours (its lease ran out and another service
        took it over) is dropped, with a warning: its job may run twice. A row that another
        transaction holds locked is skipped, then tried again at once in a second statement
        that waits for it briefly (:data:`LOCK_WAIT`): a claim or a sweep of another service
        may hold it for a moment. A row still locked then is kept, its lease not extended
        this time, and tried again at the next renewal: said once (at INFO), and said again,
        with a warning, once its lease has less than half of its time left (it was not
        renewed at least twice in a row: a lock that lasts).

        :raises TimeoutError: when the database did not answer within :attr:`renew_limit`
            (a network partition: the statement is cancelled, and the connection it was
            on closed, so that the next renewal opens a new one).
        :raises Reconnecting: when the db's connection is lost and its next attempt to
            reconnect comes after :attr:`renew_limit` (the next renewal tries again).
        """
        if not self.held:
            return
        held = dict(self.held)
        uuids = dict(self._uuids)
        limit = self.renew_limit
        wait = 0.0 if fetch is not None else self._db.reconnect_in
        if wait >= limit:
            raise Reconnecting(
                f"no connection to the database: waiting {wait:.1f} s more before "
                "reconnecting (the last attempt failed)"
            )

        async def run(statement: bytes, params: Mapping[str, Any]) -> Rows:
            if fetch is not None:
                return await fetch(statement, params)
            return await self._db.fetch(statement, params, cancel_safely=True)

        sent = time.monotonic()
        ours: dict[int, bool] | None = None
        granted: dict[int, float] = {}  # when the statement that renewed each row was sent
        with anyio.move_on_after(limit) as renewal:
            ours = dict(await run(self._statement, self._parameters(held, uuids)))
            granted = dict.fromkeys((row for row, renewed in ours.items() if renewed), sent)
            locked = {row: held[row] for row, renewed in ours.items() if not renewed}
            if locked and self._waiting:
                again = time.monotonic()
                params = {**self._parameters(locked, uuids), "lock_wait": self._lock_wait}
                try:
                    rows = await run(self._waiting, params)
                except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected):
                    rows = []  # one of them stayed locked: all wait for the next renewal
                granted.update((row, again) for row, renewed in rows if renewed)
        if ours is not None:  # (renewed, even if the second statement did not answer)
            self._record(held, uuids, ours, granted)
        if renewal.cancelled_caught:
            waited = f" ({wait:.1f} s of it waiting to reconnect)" if wait else ""
            raise TimeoutError(f"the database did not answer within {limit:g} s{waited}")

    def _parameters(
        self, rows: Mapping[int, tuple[int, int]], uuids: Mapping[int, str]
    ) -> dict[str, Any]:
        """The parameters of a renewal of *rows* (``id -> (attempt, claim)``)."""
        return {
            "ids": list(rows),
            "attempts": [attempts for attempts, _ in rows.values()],
            "claims": [claim for _, claim in rows.values()],
            "uuids": [uuids[row] for row in rows],
            "lease": self._lease,
        }

    def _record(
        self,
        held: Mapping[int, tuple[int, int]],
        uuids: Mapping[int, str],
        ours: Mapping[int, bool],
        granted: Mapping[int, float],
    ) -> None:
        """Keep what a renewal of *held* found: the rows still *ours*, those *granted* a lease."""
        now = time.monotonic()
        locked: list[int] = []
        at_risk: list[int] = []
        for row, claim in held.items():
            uuid = uuids[row]
            if self.held.get(row) != claim or self._uuids[row] != uuid:
                continue  # settled (or claimed again) meanwhile
            if row in granted:
                self._confirmed[row] = granted[row]
                if row in self._locked:
                    self._locked.discard(row)
                    said = row in self._at_risk
                    self._at_risk.discard(row)
                    logger.log(
                        logging.INFO if said else logging.DEBUG,
                        "the lease of job %d is renewed again: the lock is gone",
                        row,
                    )
            elif row in ours:
                if self._confirmed[row] + self._lease - now < self._lease / 2:
                    self._locked.add(row)
                    if row not in self._at_risk:
                        self._at_risk.add(row)
                        at_risk.append(row)
                elif row not in self._locked:
                    self._locked.add(row)
                    locked.append(row)
            else:
                self._locked.discard(row)
                self._at_risk.discard(row)
                del self.held[row]
                del self._uuids[row]
                del self._confirmed[row]
                logger.warning(
                    "lost the claim of job %d (uuid %s, attempt %d): the database no longer "
                    "has the row under this claim (its lease ran out and it was taken back, "
                    "an operator changed it, or a failover lost the last writes); it may run "
                    "again elsewhere",
                    row,
                    uuid,
                    claim[0],
                )
        if locked:  # ours, but locked for a while: tried again at the next round
            left = min(self._confirmed[row] for row in locked) + self._lease - now
            logger.info(
                "%s not renewed this round: their rows stayed locked by another transaction "
                "for over %s (%s); tried again at the next renewal, %.1f s before the leases "
                "run out: %s",
                counted(len(locked), "lease"),
                self._lock_wait if self._waiting else "a moment",
                HELD_BRIEFLY,
                left,
                self.named(locked),
            )
        if at_risk:  # not renewed twice in a row or more: said once for each
            since = now - max(self._confirmed[row] for row in at_risk)
            left = min(self._confirmed[row] for row in at_risk) + self._lease - now
            logger.warning(
                "%s at risk of running out: not renewed for %.1f s, their rows found locked "
                "by another transaction at each renewal since (a statement of the services of "
                "this queue holds a row for that statement's time only: more likely a "
                "transaction on the jobs table that lasts, an operator's or an "
                "application's, such as SELECT ... FOR UPDATE); %s: the jobs go on, but "
                "once a lease runs out and the lock is released another service may take its "
                "job back and run it again: %s",
                counted(len(at_risk), "lease"),
                since,
                f"they run out in {left:.1f} s" if left > 0 else "they have run out",
                self.named(at_risk),
            )

    def named(self, rows: list[int]) -> Phrase:
        """The jobs of *rows* as ``job N (uuid U)``, :data:`MAX_NAMED` at most."""
        return Phrase.joined(
            ", ",
            (Phrase("job %d (uuid %s)", row, self.uuid(row)) for row in rows[:MAX_NAMED]),
            more=len(rows) - MAX_NAMED,
        )

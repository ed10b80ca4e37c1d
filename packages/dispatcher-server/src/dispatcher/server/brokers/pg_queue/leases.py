"""The claims a service holds: kept alive by one statement for all, until acknowledged."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Final

import anyio

from dispatcher.server.brokers.pg_queue.database import QueueDatabase, Reconnecting, Rows
from dispatcher.server.brokers.pg_queue.outcomes import Ack
from dispatcher.server.logsafe import Phrase, counted, get_logger

logger = get_logger("dispatcher.pg_queue")

Fetch = Callable[[bytes, Mapping[str, Any]], Awaitable[Rows]]
Deliver = Callable[[Any], None]

LOCKED_BY_ANOTHER_SESSION: Final = (
    "locked by another session (a transaction that holds the row, such as SELECT ... FOR UPDATE)"
)
"""Why a row's lease or outcome waits, in the log."""
MAX_NAMED: Final = 20
"""Jobs named in one line about rows locked by another session (the count says the rest)."""

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

    def __init__(self, db: QueueDatabase, statement: bytes, lease: float) -> None:
        self._db = db
        self._statement = statement
        self._lease = lease
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
        """The held rows another session held locked at the last renewal (logged once)."""
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
        session holds locked is kept, its lease not extended this time (said once, with a
        warning), and tried again at the next renewal.

        :raises TimeoutError: when the database did not answer within :attr:`renew_limit`
            (a network partition: the statement is cancelled, and the connection it was
            on closed, so that the next renewal opens a new one).
        :raises Reconnecting: when the db's connection is lost and its next attempt to
            reconnect comes after :attr:`renew_limit` (the next renewal tries again).
        """
        if not self.held:
            return
        held = dict(self.held)
        uuids = [self._uuids[row] for row in held]
        limit = self.renew_limit
        wait = 0.0 if fetch is not None else self._db.reconnect_in
        if wait >= limit:
            raise Reconnecting(
                f"no connection to the database: waiting {wait:.1f} s more before "
                "reconnecting (the last attempt failed)"
            )
        sent = time.monotonic()
        rows: Rows = []
        with anyio.move_on_after(limit) as renewal:
            params = {
                "ids": list(held),
                "attempts": [attempts for attempts, _ in held.values()],
                "claims": [claim for _, claim in held.values()],
                "uuids": uuids,
                "lease": self._lease,
            }
            if fetch is None:
                rows = await self._db.fetch(self._statement, params, cancel_safely=True)
            else:
                rows = await fetch(self._statement, params)
        if renewal.cancelled_caught:
            waited = f" ({wait:.1f} s of it waiting to reconnect)" if wait else ""
            raise TimeoutError(f"the database did not answer within {limit:g} s{waited}")
        ours: dict[int, bool] = dict(rows)
        locked: list[int] = []
        for (row, claim), uuid in zip(held.items(), uuids, strict=True):
            if self.held.get(row) != claim or self._uuids[row] != uuid:
                continue  # settled (or claimed again) meanwhile
            renewed = ours.get(row)
            if renewed:
                self._confirmed[row] = sent
                if row in self._locked:
                    self._locked.discard(row)
                    logger.info("the lease of job %d is renewed again: the lock is gone", row)
            elif renewed is not None:
                if row not in self._locked:
                    self._locked.add(row)
                    locked.append(row)
            else:
                self._locked.discard(row)
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
        if locked:  # ours, but another session holds them locked: said once for each
            logger.warning(
                "%s not renewed: %s; the jobs go on, and their leases are renewed once the "
                "lock is released (a lock held for longer than the lease lets another service "
                "take a job back): %s",
                counted(len(locked), "lease"),
                LOCKED_BY_ANOTHER_SESSION,
                self.named(locked),
            )

    def named(self, rows: list[int]) -> Phrase:
        """The jobs of *rows* as ``job N (uuid U)``, :data:`MAX_NAMED` at most."""
        return Phrase.joined(
            ", ",
            (Phrase("job %d (uuid %s)", row, self.uuid(row)) for row in rows[:MAX_NAMED]),
            more=len(rows) - MAX_NAMED,
        )

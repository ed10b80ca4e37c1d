"""Recording outcomes in the table: one fenced statement per batch, kept until it succeeds.

Acknowledgements that cannot be written (the database is away) wait and are written with
the next batch, or by the broker's keeper; their leases are renewed meanwhile, so that no
other service runs the job again. A row the batch statement cannot take (a result
PostgreSQL refuses, a race on a queue_one twin) is written alone, without its result if
need be, so that one bad row never holds the others back. An outcome the fence refuses (the
row is no longer under the claim it settles: its lease ran out and it was taken back) is
logged with its job's uuid, every one of them, since the job may run, or have run, twice.

A row that another session holds locked is not waited for long: the working connection has
a short ``lock_timeout`` (see ``QueueDatabase``), so a batch held up by such a row fails
after it and is written one row at a time; the locked row's outcome stays queued (said once
in the log) and is tried alone again by the upkeep's rounds (:meth:`Acknowledger.flush_all`,
every ``lease / 3`` seconds), never in a batch, until the lock is released. The common
write takes no row lock of its own beyond its update's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Final

import anyio
import psycopg

from dispatcher.server.brokers.base import Settled
from dispatcher.server.brokers.pg_queue.database import QueueDatabase, Rows
from dispatcher.server.brokers.pg_queue.leases import Leases
from dispatcher.server.brokers.pg_queue.limits import NO_LIMITS, DeclaredAttempts
from dispatcher.server.brokers.pg_queue.outcomes import Ack, RetryPolicy, to_ack
from dispatcher.server.log_arguments import Phrase, in_lines
from dispatcher.server.log_records import get_logger
from dispatcher.server.log_text import counted, first_line
from dispatcher.server.stats import ServiceStats

logger = get_logger("dispatcher.pg_queue")

WRITE_LIMIT: Final = 30.0
"""Seconds one batch's write may take. It is not cancelled from outside (a stop cancelling
the write it waits for would leave rows written but their outcomes pending, written again
and refused by the fence): only this limit, or the caller's shorter one, ends it."""

_ATTEMPT: Final = "task %s (uuid %s): attempt %d of %d ended in %s; "
"""How a line on a failed attempt begins; its values are the first five of the attempt the
statement returns (task, uuid, attempts, max_attempts, outcome), then its delay."""
_NO_ATTEMPT_LEFT: Final = "no attempt left: the job is failed"

_ENCODE: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
"""Text as it is (sent in the connection's encoding, as the other parameters are)."""


class Acknowledger:
    """Writes :class:`Ack` batches; see the module docstring."""

    def __init__(
        self,
        db: QueueDatabase,
        statement: bytes,
        leases: Leases,
        policy: RetryPolicy,
        batch_size: int,
        stats: ServiceStats,
        on_retry: Callable[[float], None] = lambda delay: None,
        on_twin_free: Callable[[], None] = lambda: None,
        limits: DeclaredAttempts | None = None,
    ) -> None:
        self._db = db
        self._limits = limits
        self._statement = statement
        self._leases = leases
        self._policy = policy
        self._batch_size = batch_size
        self._stats = stats
        self._on_retry = on_retry
        self._on_twin_free = on_twin_free
        self._pending: list[Ack] = []
        self._lock = anyio.Lock()
        self._locked: set[tuple[int, int]] = set()
        """The outcomes (row, claim) whose row another session held locked: each is tried
        again alone, by :meth:`flush_all`."""
        self._failed = anyio.Event()
        """Set when outcomes are left unwritten by a failure (see :meth:`wait_unwritten`)."""

    @property
    def pending(self) -> int:
        """Acknowledgements not written yet."""
        return len(self._pending)

    @property
    def unwritten(self) -> bool:
        """Whether outcomes wait that a failure left unwritten (not those of locked rows).

        Those are tried again by :meth:`flush`; the outcomes whose rows another session
        holds locked only by :meth:`flush_all`.
        """
        locked = self._locked
        return any((ack.id, ack.claim) not in locked for ack in self._pending)

    def note_unwritten(self) -> None:
        """Outcomes were queued and not written (the database is away): see :meth:`unwritten`."""
        self._failed.set()

    async def wait_unwritten(self, timeout: float) -> None:
        """Return once a failure left outcomes unwritten (since the last call), or in *timeout*."""
        with anyio.move_on_after(timeout):
            await self._failed.wait()
        if self._failed.is_set():
            self._failed = anyio.Event()

    def add_settled(self, settled: Sequence[Settled]) -> None:
        """Queue the rows' changes for *settled* (receipts that are not ours are ignored)."""
        for item in settled:
            ack = to_ack(item, self._policy)
            if ack is not None:
                self._pending.append(ack)

    def add(self, ack: Ack) -> None:
        """Queue one row's change (a delivered claim's: see ``Leases.settling``)."""
        self._pending.append(ack)

    async def flush_all(self) -> None:
        """:meth:`flush`, the outcomes whose rows were locked by another session included."""
        await self.flush(retry_locked=True)

    async def flush(self, limit: float = WRITE_LIMIT, *, retry_locked: bool = False) -> None:
        """Write everything queued, a batch per statement, each within *limit* seconds.

        An outcome whose row another session held locked is tried again (alone) only when
        *retry_locked*, until one is found still locked (the others are tried at the next
        call): it stays queued while the lock lasts.

        :raises psycopg.Error, OSError, BrokerNotReady: when the database cannot take them
            now (``TimeoutError``: it did not answer within *limit*); what was not written
            stays queued.
        """
        async with self._lock:
            alone: list[Ack] = []
            later: list[Ack] = []
            others: list[Ack] = []
            for ack in self._pending:
                if (ack.id, ack.claim) not in self._locked:
                    others.append(ack)
                else:
                    (alone if retry_locked else later).append(ack)
            # The rows found locked go alone (a batch would wait on them again), first.
            self._pending[:] = alone + others
            waiting: list[Ack] = []
            still: list[Ack] = []
            written = False
            try:
                for left in range(len(alone), 0, -1):
                    still = await self._flush_batch(1, limit)
                    if still:
                        # Still locked: the others wait for the next call (each costs the
                        # connection its lock_timeout, and renewals wait behind it), this
                        # one tried after them.
                        later += self._pending[: left - 1]
                        del self._pending[: left - 1]
                        break
                while self._pending:
                    waiting += await self._flush_batch(self._batch_size, limit)
                written = True
            finally:
                self._pending[:0] = waiting + later + still
                if not written and self._pending:
                    self.note_unwritten()

    async def _flush_batch(self, size: int, limit: float) -> list[Ack]:
        """Write the first *size* outcomes queued; return those whose rows are locked."""
        queued = self._pending[:size]
        # Made to settle the claims adopted until now (see Leases.settling).
        batch = self._leases.settling(queued)
        given_up: set[tuple[int, int]] = set()
        locked: set[tuple[int, int]] = set()
        try:
            rows = await self._write(batch, given_up, locked, limit)
        except BaseException:
            self._leases.unwritten(batch)
            raise
        del self._pending[: len(batch)]
        taken = given_up.union((row[4], row[5]) for row in rows)
        late = {(row[4], row[5]) for row in rows if row[7]}
        fenced: list[Phrase] = []
        waiting: list[Ack] = []
        newly_locked: list[int] = []
        for original, ack in zip(queued, batch, strict=True):
            key = (ack.id, ack.claim)
            if key in locked:
                self._leases.unwritten([ack])
                waiting.append(original)
                if (original.id, original.claim) not in self._locked:
                    self._locked.add((original.id, original.claim))
                    newly_locked.append(ack.id)
                continue
            if (original.id, original.claim) in self._locked:
                self._locked.discard((original.id, original.claim))
                logger.info("the outcome of job %d is written: the lock is gone", ack.id)
            refused = key not in taken
            uuid = self._leases.release(ack, refused)
            if uuid is None:  # it settles the claim adopted meanwhile: written next
                self._pending.append(original)
                continue
            if refused:  # (its uuid always known: one copy of a row's job at a time)
                fenced.append(Phrase("%s", uuid) if uuid != "?" else Phrase("? (job %d)", ack.id))
            elif key in late:
                _log_late(ack, uuid)
            if ack.kind == "retry" or ack.delay:
                self._on_retry(ack.delay)
        self._count(rows)
        if newly_locked:  # said once for each
            logger.warning(
                "%s not recorded yet: their rows stayed locked by another transaction for "
                "longer than this service's lock_timeout (a statement of the services of this "
                "queue holds a row for that statement's time only: more likely a transaction "
                "on the jobs table, an operator's or an application's, such as SELECT ... FOR "
                "UPDATE); tried again at each renewal of leases: %s",
                counted(len(newly_locked), "outcome"),
                self._leases.named(newly_locked),
            )
        # Every uuid is logged (each job may have run twice): a line per few of them, never
        # rate-limited (at most a batch's worth per statement).
        for count, uuids in in_lines(fenced):
            logger.warning(
                "%s not recorded: the jobs are no longer this service's claims (their "
                "lease ran out, an operator changed them, or a failover lost the last "
                "writes), so they may run again, or already have: uuids %s",
                counted(count, "outcome"),
                uuids,
            )
        return waiting

    async def _write(
        self,
        batch: list[Ack],
        given_up: set[tuple[int, int]],
        locked: set[tuple[int, int]],
        limit: float,
    ) -> Rows:
        """Write *batch* within *limit* seconds, shielded; return the rows it changed.

        The (row, claim) of an outcome not written because another session holds its row
        locked go into *locked*; those of outcomes PostgreSQL never took, into *given_up*.
        """
        with anyio.CancelScope(shield=True) as write:
            write.deadline = anyio.current_time() + limit
            try:
                rows = await self._db.fetch(self._statement, self._params(batch))
            except psycopg.errors.LockNotAvailable:
                if len(batch) == 1:
                    locked.add((batch[0].id, batch[0].claim))
                    rows = []
                else:
                    rows = await self._one_by_one(batch, given_up, locked)
            except (psycopg.IntegrityError, psycopg.DataError, UnicodeEncodeError):
                rows = await self._one_by_one(batch, given_up, locked)
        if write.cancelled_caught:
            raise TimeoutError(f"the database did not answer within {limit:g} s")
        return rows

    async def _one_by_one(
        self, batch: list[Ack], given_up: set[tuple[int, int]], locked: set[tuple[int, int]]
    ) -> Rows:
        rows: Rows = []
        for ack in batch:
            try:
                written = await self._write_alone(ack)
            except psycopg.errors.LockNotAvailable:
                locked.add((ack.id, ack.claim))
                continue
            if written is None:
                given_up.add((ack.id, ack.claim))
            else:
                rows += written
        return rows

    async def _write_alone(self, ack: Ack) -> Rows | None:
        """Write one row's change; ``None`` (logged) when PostgreSQL never took it.

        :raises psycopg.errors.LockNotAvailable: another session holds the row locked.
        """
        for _ in range(3):
            try:
                return await self._db.fetch(self._statement, self._params([ack]))
            # PostgreSQL refused the result or a text, or the connection's encoding (not
            # UTF8) has no code for one of its characters.
            except (psycopg.DataError, UnicodeEncodeError) as exc:
                ack = _plain(ack, first_line(exc))
            except psycopg.IntegrityError:  # a queue_one twin came in: the next try sees it
                continue
        logger.error("could not record the outcome of job %d; its lease will run out", ack.id)
        return None

    def _params(self, batch: Sequence[Ack]) -> dict[str, object]:
        """The statement's parameters for *batch*, each row fenced by the claim it settles.

        The claim's own numbers, from its receipt: a row claimed again since (by any
        service, this one included) has another claim number and is left as it is. The
        limits the tasks declare go with a batch that retries (see :mod:`.limits`).
        """
        rows = [
            {
                "id": ack.id,
                "attempts": ack.attempts,
                "claims": ack.claim,
                "kind": ack.kind,
                "outcome": ack.outcome,
                "error": ack.error,
                "result": ack.result,
                "delay": ack.delay,
                "uuid": ack.uuid,
            }
            for ack in batch
        ]
        retries = self._limits is not None and any(ack.kind == "retry" for ack in batch)
        limits = self._limits.params() if retries and self._limits is not None else NO_LIMITS
        return {"acks": _ENCODE(rows), **limits}

    def _count(self, rows: Rows) -> None:
        """Count the retries and failures among the rows written, and log each attempt's fate.

        A serial or queue_one job no longer running lets an identical one start: the claim
        loop is told (``on_twin_free``), rather than waiting for its next poll.
        """
        if any(gated and state != "running" for _, _, state, gated, *_ in rows):
            self._on_twin_free()
        for queue, kind, state, _, _, _, attempt, late in rows:
            if kind == "retry" and state == "queued":
                self._stats.pg_queue_retries[queue] += 1
                logger.info(_ATTEMPT + "retried in %.1f s", *attempt)
            elif state == "failed":
                if not late:  # (a row failed as lost was counted by the sweep)
                    self._stats.pg_queue_failures[queue] += 1
                if kind == "retry":
                    logger.warning(_ATTEMPT + _NO_ATTEMPT_LEFT, *attempt[:5])


def _log_late(ack: Ack, uuid: str) -> None:
    """Say that *ack* was recorded over a sweep's ``worker_lost``: the job was not lost."""
    logger.warning(
        "job %d (uuid %s) ended in %s after its lease had run out and it was failed as lost "
        "(worker_lost); nobody claimed it since: its outcome is recorded",
        ack.id,
        uuid,
        ack.outcome,
    )


def _plain(ack: Ack, why: str) -> Ack:
    """*ack* without its result, and with its error text in plain ASCII."""
    if ack.kind == "done":
        error: str | None = f"result not kept: PostgreSQL refused it ({why})"[:500]
    else:
        plain = None if ack.error is None else ack.error.encode("ascii", "backslashreplace")
        error = None if plain is None else plain.decode()
    return ack._replace(error=error, result=None)

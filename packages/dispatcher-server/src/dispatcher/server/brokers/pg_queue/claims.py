"""Claiming ready jobs, no more than the service can take, and delivering them.

No claim is made without both connections its jobs need: the working one (their outcomes
and lease renewals) is opened (and checked) before the claiming one, before every claim;
while it cannot be, the loop claims nothing and says why (a service that claimed without it
ran jobs it could never settle: their rows stayed ``running``, their leases ran out, and
they ran again elsewhere).

The loop waits for free capacity (free workers, plus the jobs held ahead of them: see
:mod:`.prefetch`), claims up to that many rows (at most ``batch_size``, and
:data:`CLAIM_BYTES` of messages) in one statement, and delivers each. When it got fewer than
it asked for, and not for want of bytes, the queue is drained for now: it waits for a
wake-up (a NOTIFY, a retry or delayed job becoming ready: the claim says when the first one
does) or ``poll_interval`` seconds.
A claim and its deliveries are never cut in two by a shutdown: rows claimed are always
delivered (and so always acknowledged).

Over several queues, a claim shares its rows among the queues that have ready jobs, which
take turns in the order of the list it is given (see ``sql_claims.CLAIM``); the loop rotates that
list after each claim, to begin after the last queue that got the most rows, so that no
queue waits behind a busier one, even when each claim takes one job.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any, Final

import anyio
import psycopg

from dispatcher.publish.broker_errors import all_attempts
from dispatcher.publish.pg_text import HOLDS_ANY_TEXT, python_codec
from dispatcher.schema import MAX_MESSAGE_BYTES
from dispatcher.schema.log_fields import ATTEMPT
from dispatcher.server.brokers.base import BrokerNotReady, Capacity, Deliver
from dispatcher.server.brokers.pg_queue.acks import Acknowledger
from dispatcher.server.brokers.pg_queue.database import FAILURES, QueueDatabase, Rows
from dispatcher.server.brokers.pg_queue.leases import Leases
from dispatcher.server.brokers.pg_queue.limits import NO_LIMITS, DeclaredAttempts
from dispatcher.server.brokers.pg_queue.outcomes import Ack, receipt
from dispatcher.server.brokers.pg_queue.privileges import CLAIM, explain
from dispatcher.server.brokers.pg_queue.wakeup import Wakeup
from dispatcher.server.log_records import get_logger
from dispatcher.server.log_text import counted, first_line
from dispatcher.server.origin import Origin, StoredRow
from dispatcher.server.ratelimit import FailureLog
from dispatcher.server.rejection import rejection_fields
from dispatcher.server.stats import ServiceStats

logger = get_logger("dispatcher.pg_queue")

CLAIM_TIMEOUT: Final = 30.0
"""Seconds a claim may take before it is given up (its connection is then replaced)."""

CLAIM_BYTES: Final = 16 * 1024 * 1024
"""Bytes of messages after which a claim takes no more (the message that reaches them
included: at most this plus one message, and at least one message whatever its size): a
backlog of large messages comes in several claims, never hundreds of megabytes at once."""

RACES: Final = 5
"""Claims retried, with a smaller batch, after losing a race for an identical serial job."""


class NoWorkingConnection(ConnectionError):
    """No claim: the working connection, which its jobs' outcomes need, cannot be opened."""


@dataclass(frozen=True)
class ClaimOptions:
    """What the claim loop needs from ``brokers.pg_queue``."""

    queues: Collection[str]
    node_id: str
    lease: float
    poll_interval: float
    batch_size: int
    prefetch: Callable[[], int] = lambda: 0
    """How many jobs to hold ahead of the free workers now (see :mod:`.prefetch`)."""


UNREADABLE: Final = (
    psycopg.errors.CharacterNotInRepertoire,
    psycopg.errors.UntranslatableCharacter,
)
"""The errors of a claim that reads a row whose text cannot be sent as UTF-8: bytes that are
not UTF-8 on ``SQL_ASCII``, or a character without a UTF-8 equivalent (a byte the
database's encoding leaves undefined)."""


def _undecodable(columns: Iterable[tuple[str, bytes]], encoding: str) -> str | None:
    """Why the first of *columns* (name, bytes in *encoding*) cannot be read as UTF-8, or ``None``.

    :raises LookupError: when that cannot be told here: an encoding whose conversion only
        the server knows (``EUC_JP``...).
    """
    name = encoding.upper()
    codec = "utf-8" if name in HOLDS_ANY_TEXT else python_codec(name)
    if codec is None:
        raise LookupError(encoding)
    for column, value in columns:
        raw = bytes(value)
        try:
            raw.decode(codec)
        except UnicodeDecodeError as exc:
            if codec == "utf-8":
                bad = raw[exc.start : exc.start + 4].hex(" ")
                return (
                    f"its {column} is not UTF-8 text (bytes {bad} at byte {exc.start}): "
                    f"written by a client in another encoding on a {name} database"
                )
            bad = raw[exc.start : exc.end].hex(" ")
            return (
                f"its {column} holds bytes {bad} at byte {exc.start}, which the database's "
                f"encoding ({name}) leaves undefined (no UTF-8 equivalent): written unchecked "
                "by a client in that encoding"
            )
    return None


class Claimer:
    """The claim loop; see the module docstring."""

    def __init__(
        self,
        db: QueueDatabase,
        statement: bytes,
        options: ClaimOptions,
        capacity: Capacity,
        leases: Leases,
        acks: Acknowledger,
        stats: ServiceStats,
        limits: DeclaredAttempts | None = None,
        *,
        schema: str | None = None,
        work: QueueDatabase | None = None,
        quarantine: tuple[bytes, bytes, bytes] | None = None,
    ) -> None:
        self._db = db
        self._work = work
        """The connection the claimed jobs' outcomes and lease renewals go through: open
        before each claim (none is made while it cannot be opened)."""
        self._quarantine_statements = quarantine
        """The statements that find, check and fail rows no service can read (see _quarantine)."""
        self._limits = limits
        self._schema = schema
        """The tables' schema: a claim refused a privilege says what to grant on it."""
        self._statement = statement
        self._options = options
        self._capacity = capacity
        self._leases = leases
        self._acks = acks
        self._stats = stats
        self._failures = FailureLog(logger, logging.WARNING)
        self._failing_from = (0.0, 0)
        """Since when (``time.monotonic()``) claims fail, and how many had failed before."""
        self._order = list(options.queues)
        self._position = {queue: n for n, queue in enumerate(self._order)}
        self._start = 0
        """The position in ``options.queues`` of the queue with the next claim's first turn."""
        self._queues = self._order
        """The queues in the order of the next claim's turns."""

    async def run(self, deliver: Deliver, wakeup: Wakeup) -> None:
        """Claim and deliver until cancelled."""
        options = self._options
        while True:
            wanted = min(await self._capacity.wait_free(options.prefetch()), options.batch_size)
            drained = True
            try:
                # Connecting (and waiting out a reconnect delay) may be cancelled; the claim
                # itself may not: rows claimed are always delivered, so always settled.
                await self._ready()
                with anyio.move_on_after(CLAIM_TIMEOUT, shield=True):
                    sent = time.monotonic()
                    rows, limit = await self._claim(wanted)
                    if rows and rows[-1][0] is None:  # drained: when the next delayed job is due
                        wakeup.next_job_in(rows.pop()[-1])
                    self._deliver(rows, deliver, sent)
                    if len(self._order) > 1 and rows:
                        self._rotate(rows)
                    # Fewer than asked for: none left, unless the claim's bytes ran out first,
                    # or rows were left for later (the candidates it says): identical serial
                    # rows, or the rest of a busy queue that gave its share of the claim.
                    drained = (
                        len(rows) < limit
                        and sum(row[5] for row in rows) < CLAIM_BYTES
                        and (not rows or rows[0][6] < limit)
                    )
            except FAILURES as exc:
                self._failed(await self._explain(exc))
            else:
                self._succeeded()
            if drained:
                await wakeup.wait(options.poll_interval)

    async def _ready(self) -> None:
        """Open the connections a claim needs (when not open): the working one first.

        :raises NoWorkingConnection: when the working connection cannot be opened.
        """
        work = self._work
        if work is not None and not work.connected:  # (open: its lock not waited for)
            # The reconnect delay waited out here, not in ready(): that would hold the
            # connection's lock meanwhile, and the renewals and outcomes behind it.
            delay = work.reconnect_in
            if delay > 0:
                await anyio.sleep(delay)
            try:
                await work.ready(wait=False)
            except FAILURES as exc:
                if isinstance(exc, psycopg.errors.InsufficientPrivilege | BrokerNotReady):
                    raise
                why = all_attempts(exc) or first_line(exc)
                raise NoWorkingConnection(
                    f"no connection for the outcomes and lease renewals of the jobs it would "
                    f"claim ({why}): claiming none until one opens"
                ) from None
        await self._db.ready()

    async def _explain(self, exc: BaseException) -> str:
        """Why a claim failed, in one line (with what to grant, if refused a privilege)."""
        if self._schema is None:
            return first_line(exc)
        return await explain(exc, self._db.fetch, self._schema, CLAIM)

    def _failed(self, error: str) -> None:
        """A claim failed: count it, remember why, log it (rate-limited)."""
        stats = self._stats
        stats.pg_queue_claim_failures += 1
        stats.pg_queue_last_error, stats.pg_queue_last_error_time = error, time.time()
        stats.broker("pg_queue").failed(error)
        if stats.pg_queue_failing_since is None:
            stats.pg_queue_failing_since = stats.pg_queue_last_error_time
            self._failing_from = (time.monotonic(), stats.pg_queue_claim_failures - 1)
        self._failures.log(error, "cannot claim jobs: %s", error)

    def _succeeded(self) -> None:
        """A claim worked: the broker serves; after failures, say that claiming goes on again.

        (It serves even when the renewals of leases said it failed: the database is back.)
        """
        self._stats.broker("pg_queue").serving()
        if self._stats.pg_queue_failing_since is None:
            return
        self._failures.ended()
        self._stats.pg_queue_failing_since = None
        since, before = self._failing_from
        logger.info(
            "claiming jobs again after %s over %.1f s",
            counted(self._stats.pg_queue_claim_failures - before, "failure"),
            time.monotonic() - since,
        )

    async def _claim(self, wanted: int) -> tuple[Rows, int]:
        """Return the rows claimed, up to *wanted*, and the limit their claim asked for.

        The limit is smaller than *wanted* after a lost race.
        """
        options = self._options
        limit = wanted
        for _ in range(RACES):
            params = {
                "queues": self._queues,
                "limit": limit,
                "node_id": options.node_id,
                "lease": options.lease,
                "max_bytes": MAX_MESSAGE_BYTES,
                "max_total_bytes": CLAIM_BYTES,
                **(NO_LIMITS if self._limits is None else self._limits.params()),
            }
            try:
                return await self._db.fetch(self._statement, params), limit
            except psycopg.errors.UniqueViolation:  # another service took its twin first
                limit = max(1, limit // 2)
            except UNREADABLE:
                if not await self._quarantine(params):
                    raise
        return [], limit

    async def _quarantine(self, params: dict[str, Any]) -> bool:
        """Fail the rows a claim reads whose text cannot be sent as UTF-8; return whether any.

        Only a client in the database's encoding stores such text, unchecked: on
        ``SQL_ASCII``, bytes that are not UTF-8; on another encoding, a byte it leaves
        undefined (``0x81`` in ``WIN1252``) or a character without a UTF-8 equivalent. The
        claim, which reads them as UTF-8, fails on them, every time. They are hostile rows,
        failed with the reason, like a row whose message is invalid; the text of the others
        (``é`` in ``WIN1252``) is read as the server converts it, and left alone.
        """
        if self._quarantine_statements is None:
            return False
        find, check, fail = self._quarantine_statements
        found = await self._db.fetch(find, {"queues": params["queues"], "limit": params["limit"]})
        ids: list[int] = []
        errors: list[str] = []
        for row, uuid, task, message, encoding in found:
            columns = (("uuid", uuid), ("task", task), ("message", message))
            try:
                reason = _undecodable(columns, encoding)
            except LookupError:
                reason = await self._refused(check, row, [name for name, _ in columns])
            if reason is not None:
                ids.append(row)
                errors.append(f"rejected: {reason}")
                self._stats.rejected["invalid_message"] += 1
                logger.warning("job %d rejected: %s", row, reason)
        if ids:
            failed = await self._db.fetch(fail, {"ids": ids, "errors": errors})
            for (queue,) in failed:  # failed jobs, as those whose outcome says so are
                self._stats.pg_queue_failures[queue] += 1
        return bool(ids)

    async def _refused(self, check: bytes, row: int, columns: list[str]) -> str | None:
        """Why the server cannot convert a column of *row* to UTF-8, or ``None``.

        One statement per column: for the encodings whose conversion only it knows.
        """
        for column in columns:
            try:
                await self._db.fetch(check, {"id": row, "column": column})
            except UNREADABLE as exc:
                return f"its {column} has no UTF-8 equivalent ({first_line(exc)})"
        return None

    def _rotate(self, rows: Rows) -> None:
        """Give the first turn of the next claim to the queue after the last one served.

        The last one served is, of the queues that got the most rows of this claim (the
        ones given a row more, or the only ones given a turn), the last in turn order.
        """
        counts = Counter(row[3] for row in rows)
        most = max(counts.values())
        size, start, position = len(self._order), self._start, self._position
        turn = max((position[queue] - start) % size for queue, n in counts.items() if n == most)
        self._start = start = (start + turn + 1) % size
        self._queues = self._order[start:] + self._order[:start]

    def _deliver(self, rows: Rows, deliver: Deliver, sent: float) -> None:
        """Deliver the rows claimed by a statement sent at *sent*, oldest first."""
        send = functools.partial(self._send, deliver)
        counts = self._stats.pg_queue_claims
        for claimed in sorted(rows):
            row, attempts, claim, queue, _, _, _, uuid, _, _, _, _ = claimed
            counts[queue] += 1
            if self._leases.add(row, attempts, claim, sent, uuid, send, claimed):
                send(claimed)
            # Else this service has the job already, from an earlier claim: adopted, not
            # run twice (or delivered once the write of that claim's outcome is recorded).

    def _send(self, deliver: Deliver, claimed: tuple[Any, ...]) -> None:
        """Deliver one claimed row (rejected when its message is too large)."""
        row, attempts, claim, queue, message, size, _, uuid, task, mode, delay, _ = claimed
        if message is None:
            self._stats.rejected["oversized"] += 1
            reason = f"the message is {size} bytes, more than {MAX_MESSAGE_BYTES}"
            fields = rejection_fields("oversized", uuid, "pg_queue", queue)
            fields[ATTEMPT] = attempts
            logger.warning("job %d (uuid %s) rejected: %s", row, uuid, reason, extra=fields)
            self._acks.add(Ack(row, attempts, claim, "failed", "rejected", reason, uuid=uuid))
            return
        origin = Origin(
            "pg_queue",
            channel=queue,
            receipt=receipt(row, attempts, claim, uuid),
            scheduled_by_broker=True,
            authenticated=True,
            stored_as=StoredRow(uuid, task, mode, delay),
            attempt=attempts,
        )
        deliver(message, origin)

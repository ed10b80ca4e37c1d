"""Waking the claim loop: a NOTIFY on the wake-up channel, or the poll interval.

Publishers NOTIFY :data:`~dispatcher.schema.QUEUE_WAKEUP_CHANNEL` with the queue's name in
the transaction that stores a job. The listener has a connection of its own (reconnected
with a growing delay when lost, like the pg_notify broker's) and wakes the claim loop for
the queues it serves; after each (re)connection it wakes it anyway, for the jobs stored
while it was not listening. Notifications are only hints: the claim loop also looks every
``poll_interval`` seconds, so nothing depends on them arriving. Jobs that wait for a time
(retries, delays) wake the claim loop when that time comes, not at its next poll.
"""

from __future__ import annotations

import contextlib
import heapq
import time
from collections.abc import Collection
from typing import Final

import anyio
import psycopg

from dispatcher.publish import describe_server
from dispatcher.publish.broker_errors import all_attempts
from dispatcher.schema import QUEUE_WAKEUP_CHANNEL
from dispatcher.server.backoff import FIRST_RETRY, HEALTHY_AFTER, MAX_RECONNECT, Backoff
from dispatcher.server.brokers.pg_connections import open_connection, start_listening
from dispatcher.server.brokers.pooler_probe import check_notifications_arrive, probe_channel
from dispatcher.server.cancelling import execute_within
from dispatcher.server.log_records import get_logger
from dispatcher.server.log_text import first_line
from dispatcher.server.ratelimit import FailureLog

logger = get_logger("dispatcher.pg_queue")

CHECK_AFTER: Final = 30.0
"""Seconds without a notification after which the listening connection is checked."""

CHECK_TIMEOUT: Final = 10.0
"""Seconds the check of the listening connection may take before it is cancelled."""

PROBE_TIMEOUT: Final = 5.0
"""Seconds a probe through a pooler has to come back (see :mod:`..pooler_probe`)."""

REMEDY: Final = (
    "set brokers.pg_queue.transaction_pooler: true, or point its conninfo at PostgreSQL or a "
    "session-mode pool"
)
"""How a wake-up listener whose notifications a pooler loses is put right."""

MAX_DUE: Final = 1024
"""Retry times a :class:`Wakeup` keeps (the earliest): see :meth:`Wakeup.after`."""


class Wakeup:
    """A flag the listener (or anyone) sets and the claim loop waits for, with a timeout.

    Besides the flag, it knows when jobs become ready: the retries this service scheduled
    (:meth:`after`, every one until its time comes) and the first job waiting in the table
    for its ``run_after``, as the last claim read it (:meth:`next_job_in`). A wait ends at
    the earliest of those.
    """

    def __init__(self) -> None:
        self._event = anyio.Event()
        self._due: list[float] = []  # a heap of monotonic times
        self._next_job = float("inf")

    def set(self) -> None:
        """Wake the waiter now (or make its next wait return at once)."""
        self._event.set()

    def after(self, delay: float) -> None:
        """Wake the waiter in *delay* seconds at the latest (a retry becomes ready then).

        Every time given is kept until it comes, up to :data:`MAX_DUE` of them; past that, a
        time later than the earliest kept is dropped (in constant time), which loses nothing:
        each wake-up claims, and a claim that drains the queues reads when the next waiting
        job becomes ready.
        """
        due = time.monotonic() + delay
        earliest = self._due[0] if self._due else float("inf")
        if len(self._due) >= MAX_DUE and due >= earliest:
            return  # the claim at the earliest time reads this one's time, if still waiting
        heapq.heappush(self._due, due)
        if len(self._due) > 2 * MAX_DUE:  # only times earlier than all the others got here
            self._due = heapq.nsmallest(MAX_DUE, self._due)  # sorted: still a heap
        if due < earliest:
            self._event.set()  # a wait under way started with a later timeout: it starts over

    def next_job_in(self, delay: float | None) -> None:
        """The first job waiting in the table becomes ready in *delay* s (``None``: none waits).

        Said by the claim loop after each claim that drained the queues, before it waits.
        """
        self._next_job = float("inf") if delay is None else time.monotonic() + max(0.0, delay)

    async def wait(self, timeout: float) -> None:
        """Return when woken, or when a job becomes ready, or after *timeout* s; clear the flag."""
        now = time.monotonic()
        due = min(self._due[0] if self._due else float("inf"), self._next_job)
        if due <= now + timeout:
            timeout = max(0.0, due - now)
        with anyio.move_on_after(timeout):
            await self._event.wait()
        if self._event.is_set():
            self._event = anyio.Event()
        now = time.monotonic()
        while self._due and self._due[0] <= now:  # ready now: the claim that follows takes it
            heapq.heappop(self._due)
        if self._next_job <= now:
            self._next_job = float("inf")


async def listen(
    conninfo: str, application_name: str, queues: Collection[str], wakeup: Wakeup
) -> None:
    """LISTEN for wake-ups of *queues* until cancelled, reconnecting when the connection fails."""
    backoff = Backoff(initial=FIRST_RETRY, maximum=MAX_RECONNECT)
    where = describe_server(conninfo)
    wanted = frozenset(queues)
    failures = FailureLog(logger)
    probes = probe_channel()
    while True:
        connected_at: float | None = None
        try:
            async with await open_connection(conninfo, application_name) as conn:
                await check_notifications_arrive(conn, conninfo, probes, PROBE_TIMEOUT, REMEDY)
                await start_listening(conn, [QUEUE_WAKEUP_CHANNEL])
                connected_at = time.monotonic()
                failures.ended()
                wakeup.set()  # jobs may have come while nobody listened
                while True:
                    async for notify in conn.notifies(timeout=CHECK_AFTER):
                        if notify.payload in wanted:
                            wakeup.set()
                    # Cancelled on the server if late, lest a session of ours stay there.
                    with contextlib.suppress(psycopg.errors.QueryCanceled):  # (it answered)
                        await execute_within(conn, "SELECT 1", None, CHECK_TIMEOUT)
        except (psycopg.Error, OSError, TimeoutError) as exc:
            if connected_at is not None and time.monotonic() - connected_at >= HEALTHY_AFTER:
                backoff.reset()
            delay = backoff.next_delay()
            why = all_attempts(exc) or first_line(exc)
            failures.log(
                why, "wake-up connection to %s failed (%s); retrying in %.1f s", where, why, delay
            )
            await anyio.sleep(delay)

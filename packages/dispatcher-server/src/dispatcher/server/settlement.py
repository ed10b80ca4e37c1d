"""Telling durable brokers how the jobs they delivered ended, in batches.

A payload delivered with a receipt (:attr:`~dispatcher.server.origin.Origin.receipt`) is
settled exactly once: with its job's outcome when the job ends, or with ``rejected``,
``discarded``, ``refused`` or ``abandoned`` when it never ran. Settling costs a list append;
one task per service hands each broker what has gathered, in one call, so that a busy
service acknowledges many jobs per round trip.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Final, Protocol

import anyio
from anyio.abc import TaskStatus

from dispatcher.server.brokers.base import Acknowledging, Broker, Settled
from dispatcher.server.jobs import Job
from dispatcher.server.log_records import get_logger
from dispatcher.server.log_text import counted
from dispatcher.server.origin import Origin
from dispatcher.server.ratelimit import RateLimitedLog

logger = get_logger("dispatcher.settlement")

REJECTED: Final = "rejected"
"""The message was refused before it became a job (invalid, unknown task, unsigned...)."""
DISCARDED: Final = "discarded"
"""``on_duplicate`` dropped it (a duplicate was active)."""
REFUSED: Final = "refused"
"""A limit of ``service.limits`` was reached: the broker may deliver it again later."""
ABANDONED: Final = "abandoned"
"""The service stopped before the job started: the broker should deliver it again."""


class SettleJob(Protocol):
    """How the parts that see jobs end report it: :meth:`Settlements.job`."""

    def __call__(
        self,
        job: Job,
        outcome: str,
        reason: str | None = None,
        *,
        result: str | None = None,
        traceback: str | None = None,
        final: bool = False,
        ran: float | None = None,
    ) -> None:
        """Settle *job* with *outcome* (see :meth:`Settlements.job`)."""


def settle_nothing(
    job: Job,
    outcome: str,
    reason: str | None = None,
    *,
    result: str | None = None,
    traceback: str | None = None,
    final: bool = False,
    ran: float | None = None,
) -> None:
    """A :class:`SettleJob` that does nothing (for parts used without durable brokers)."""


class Settlements:
    """Gathers settlements per acknowledging broker and hands them over in batches."""

    def __init__(self, brokers: Sequence[Broker]) -> None:
        self._brokers: dict[str, Acknowledging] = {
            broker.name: broker for broker in brokers if isinstance(broker, Acknowledging)
        }
        self._pending: dict[str, list[Settled]] = {name: [] for name in self._brokers}
        self._wakeup = anyio.Event()
        self._failures = RateLimitedLog(logger, logging.WARNING)

    def origin(self, origin: Origin, outcome: str, reason: str | None = None) -> None:
        """Settle a payload that did not become a job (rejected, or a control message)."""
        if origin.receipt is not None and origin.broker is not None:
            self._add(origin.broker, Settled(origin.receipt, outcome, reason))

    def job(
        self,
        job: Job,
        outcome: str,
        reason: str | None = None,
        *,
        result: str | None = None,
        traceback: str | None = None,
        final: bool = False,
        ran: float | None = None,
    ) -> None:
        """Settle *job* (a no-op for jobs that came without a receipt).

        *result* is the task's return value as JSON text (``ok``); *reason* and *traceback*
        say why it failed, and *final* that no attempt can do better; *ran*, the seconds it
        ran (see :class:`~dispatcher.server.brokers.base.Settled`).
        """
        if job.receipt is not None and job.broker is not None:
            settled = Settled(job.receipt, outcome, reason, result, traceback, final, ran)
            self._add(job.broker, settled)

    def _add(self, broker: str, settled: Settled) -> None:
        pending = self._pending.get(broker)
        if pending is not None:
            pending.append(settled)
            self._wakeup.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Hand settlements over as they gather, until cancelled."""
        task_status.started()
        if not self._brokers:
            await anyio.sleep_forever()
        while True:
            await self._wakeup.wait()
            self._wakeup = anyio.Event()
            await self.flush()

    async def flush(self, timeout: float = math.inf) -> None:
        """Hand over everything gathered so far (also called at shutdown).

        A broker that has not taken its batch after *timeout* seconds is given up on, with a
        warning (a stop must not wait for a database that does not answer).
        """
        for name, broker in self._brokers.items():
            batch = self._pending[name]
            if not batch:
                continue
            self._pending[name] = []
            try:
                with anyio.move_on_after(timeout) as waited:
                    await broker.acknowledge(batch)
                if waited.cancelled_caught:
                    logger.warning(
                        "the %s broker did not take %s within %g s: given up",
                        name,
                        counted(len(batch), "outcome"),
                        timeout,
                    )
            except Exception as exc:  # a broker's failure must never stop the service
                self._failures.log(
                    "the %s broker could not record %d outcomes: %s: %s",
                    name,
                    len(batch),
                    type(exc).__name__,
                    exc,
                )

"""What ``dispatcherctl top`` collects at each refresh: ``status`` replies, durable queue depth.

One ``status`` request per refresh (it carries ``workers``, ``running``, the counters and
``recent_failures``), and, when the config has ``brokers.pg_queue``, one sample of the
durable queues' depth over a connection kept open between refreshes (the query the service's
own sampler runs, see :mod:`dispatcher.server.brokers.pg_queue.sampler`). Failures become
notes on the :class:`~dispatcher.server.ctl_top_data.Poll`, never exceptions: the live
view shows them and tries again at the next refresh. Each part of a poll has a deadline of
its own (:attr:`Collector.deadline`), so that a database that stops answering mid-way (a
network partition) cannot freeze the view.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Final

import anyio
import psycopg

from dispatcher.config import Settings
from dispatcher.control import ControlResult, acontrol_with_reply
from dispatcher.publish import BrokerUnavailable, PublishError, describe_server
from dispatcher.server.brokers.pg_queue.sampler import QueueSampler, sampling_connection
from dispatcher.server.ctl_columns import shown
from dispatcher.server.ctl_reply_notes import control_channel, control_failure, no_service_found
from dispatcher.server.ctl_top_data import Poll
from dispatcher.server.log_text import first_line
from dispatcher.server.stats import QueueDepth

APPLICATION_NAME: Final = "dispatcherctl-top"
"""``application_name`` of the connection that samples the durable queues."""

CONNECT_TIMEOUT: Final = 10
"""Seconds connecting to the durable queues' database may take."""


class Collector:
    """Collects one :class:`Poll` per call of :meth:`poll`; :meth:`aclose` when done."""

    def __init__(self, settings: Settings, expected_replies: int | None, timeout: float) -> None:
        self._expected_replies = expected_replies
        self._timeout = timeout
        self._settings = settings
        self._channel = control_channel(settings)
        durable = settings.brokers.pg_queue
        self._sampler = (
            None
            if durable is None
            else QueueSampler(durable.conninfo, durable.schema, durable.queues, APPLICATION_NAME)
        )
        self._conn: psycopg.AsyncConnection[Any] | None = None

    @property
    def deadline(self) -> float:
        """Seconds each part of a poll may take: connecting, then waiting for the replies."""
        return CONNECT_TIMEOUT + self._timeout

    async def poll(self) -> Poll:
        """Ask the services for ``status`` and sample the queues, both at once."""
        asked: list[ControlResult | PublishError] = []
        sampled: list[tuple[Mapping[str, QueueDepth] | None, str | None]] = []
        late = f"no answer from the database within {self.deadline:g} s"

        async def ask() -> None:
            with anyio.move_on_after(self.deadline):
                asked.append(await self._status())
                return
            asked.append(BrokerUnavailable(late))

        async def sample() -> None:
            with anyio.move_on_after(self.deadline):
                sampled.append(await self._depths())
                return
            await self.aclose()  # it may be stuck: the next poll connects afresh
            sampled.append(({}, f"cannot read the durable queues' depth: {late}"))

        async with anyio.create_task_group() as group:
            group.start_soon(ask)
            group.start_soon(sample)
        [result], [(depths, depth_note)] = asked, sampled
        notes = [] if depth_note is None else [depth_note]
        at, wall = time.monotonic(), time.time()
        if isinstance(result, PublishError):
            notes.insert(0, f"cannot ask the services: {control_failure(self._settings, result)}")
            status = 1 if isinstance(result, BrokerUnavailable) else 2
            return Poll(at, wall, depths=depths, notes=notes, status=status)
        told_how_many = self._expected_replies is not None  # then none is fine too
        answered = result.expected > 0 or bool(result.replies) or told_how_many
        if not answered:
            notes.insert(0, no_service_found(self._channel, result))
        notes[:0] = [shown(note) for note in result.skipped]
        return Poll(
            at,
            wall,
            replies=result.replies,
            missing=result.missing,
            depths=depths,
            notes=notes,
            status=0 if result.complete and answered else 1,
        )

    async def _status(self) -> ControlResult | PublishError:
        try:
            return await acontrol_with_reply(
                "status", expected_replies=self._expected_replies, timeout=self._timeout
            )
        except PublishError as exc:
            return exc

    async def _depths(self) -> tuple[Mapping[str, QueueDepth] | None, str | None]:
        """The queues' depth (``None`` without ``brokers.pg_queue``), or why there is none."""
        sampler = self._sampler
        if sampler is None:
            return None, None
        try:
            if self._conn is None or self._conn.closed:
                self._conn = await self._connect(sampler.conninfo)
            return await sampler.sample(self._conn), None
        except (psycopg.Error, OSError) as exc:
            await self.aclose()
            where = describe_server(sampler.conninfo)
            return {}, f"cannot read the durable queues' depth in {where}: {shown(first_line(exc))}"

    @staticmethod
    async def _connect(conninfo: str) -> psycopg.AsyncConnection[Any]:
        """A connection to sample the queues on, as the service's sampler does."""
        return await sampling_connection(conninfo, APPLICATION_NAME, CONNECT_TIMEOUT)

    async def aclose(self) -> None:
        """Close the queue-sampling connection, if open."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with anyio.CancelScope(shield=True):
                await conn.close()

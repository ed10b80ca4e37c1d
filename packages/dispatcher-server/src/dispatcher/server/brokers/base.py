"""The broker protocol: how payloads reach the service, and how replies and outcomes leave it.

A broker is built once per service by its factory, ``factory(options, context)``, from its
config section (``brokers.<name>``) and a :class:`BrokerContext`. The service then:

1. runs ``await broker.run(deliver, task_status=...)`` in a task of its own; the broker
   calls ``task_status.started()`` once it is receiving (or retrying in the background),
   then ``deliver(payload, origin)`` for every payload it receives;
2. calls ``await broker.reply(reply_to, reply)`` for each control reply to a message the
   broker delivered (unless the message's :class:`Origin` carries a reply sink of its own);
3. calls ``broker.stop_receiving()`` when a graceful shutdown begins: no more deliveries;
   replies, and a durable broker's acknowledgements, may still follow;
4. cancels ``run()`` once the workers are done: the broker releases what it holds.

Durable brokers also implement :class:`Acknowledging` and read :attr:`BrokerContext.capacity`
to claim no more work than the service can start. See ``docs/brokers.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, runtime_checkable

import anyio
from anyio.abc import TaskStatus

from dispatcher.config import Settings
from dispatcher.schema import DispatcherError, service_application_name
from dispatcher.server.origin import Origin
from dispatcher.server.stats import ServiceStats

Deliver = Callable[[str, Origin], None]
"""Hands one raw payload to the service: ``deliver(payload, origin)``.

Synchronous and cheap: it decodes, validates and queues the payload (or rejects it, counted
and logged) before it returns. It never raises and never blocks, so a broker may call it
from its receiving loop for every payload. The payload is the message's JSON text (or a
chunk envelope, or a signed envelope) exactly as the publisher sent it.
"""


class Broker(Protocol):
    """A way for messages to reach the service, and for control replies to go back."""

    name: str
    """The broker's name: its key under ``brokers`` in the config."""

    async def run(
        self, deliver: Deliver, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Receive payloads and hand each to *deliver*, until cancelled.

        Call ``task_status.started()`` once receiving, or once the first attempt to connect
        failed and further attempts go on in the background: the service waits for it
        before it goes on starting. Recover from lost connections here (with a growing
        delay); an exception that escapes is logged, and the service calls ``run()`` again
        after a growing pause (see ``brokers.runner``): be ready to run again. Release
        everything when cancelled (shielded clean-up).
        """
        ...

    def stop_receiving(self) -> None:
        """Deliver nothing more: a graceful shutdown has begun. Idempotent.

        :meth:`reply` and :meth:`Acknowledging.acknowledge` may still be called until
        :meth:`run` is cancelled.
        """
        ...

    async def reply(self, reply_to: str, reply: Mapping[str, Any]) -> None:
        """Send a control *reply* (a JSON object) to *reply_to*.

        *reply_to* is named by a message this broker delivered: it comes from outside, so
        check it before using it as a name. Called by one task per broker, in order, never
        concurrently. Raise ``OSError`` or a ``DispatcherError`` to have the failure logged
        (rate-limited); the reply is dropped.
        """
        ...


@dataclass(frozen=True, slots=True)
class Settled:
    """How a job a durable broker delivered ended, for :meth:`Acknowledging.acknowledge`."""

    receipt: str
    """The :attr:`Origin.receipt` the payload was delivered with."""
    outcome: str
    """An :class:`~dispatcher.schema.Outcome` value (``ok``, ``error``, ``timeout``, ...), or
    how the job never ran: ``rejected`` (refused on receipt), ``discarded``
    (``on_duplicate``), ``refused`` (a ``service.limits`` limit: deliver it again later),
    ``abandoned`` (the service stopped first: deliver it again)."""
    reason: str | None = None
    """Why: the reason for ``rejected``, ``discarded`` and the like; the error's summary
    (``ValueError: ...``) for ``error``; for ``ok``, why the result was not kept."""
    result: str | None = None
    """For ``ok``: the task's return value as JSON text, when it was JSON-serialisable and
    at most :data:`~dispatcher.server.results.MAX_RESULT_BYTES` long (else ``None``, and
    :attr:`reason` says why)."""
    traceback: str | None = None
    """For ``error``: the traceback of the exception the task raised."""
    final: bool = False
    """For ``error``: no attempt can end otherwise (the message's arguments do not fit the
    task's signature, so its code never ran): a durable broker should not retry it."""
    ran: float | None = None
    """Seconds the job ran on its worker (``None``: it never started); a durable broker
    holds jobs ahead of its workers only while its jobs run quickly."""


@runtime_checkable
class ReplyingInBatches(Protocol):
    """Optional: a broker that sends several control replies in one go.

    A burst of control commands (a client's retries, a fleet's dashboards) leaves many
    replies waiting; a broker that sends each in a round trip of its own makes the last
    wait for all the others. When more than one reply waits, the service calls
    :meth:`reply_batch` with them all (at most
    :data:`~dispatcher.server.brokers.replies.MAX_REPLIES_AT_ONCE`), in place of
    :meth:`Broker.reply` for each; from the same one task, never concurrently.
    """

    async def reply_batch(
        self, replies: Sequence[tuple[str, Mapping[str, Any]]]
    ) -> list[Exception | None]:
        """Send each ``(reply_to, reply)`` of *replies*, in their order.

        Return, for each, ``None`` when it was sent (or needs no sending), else the
        exception that says why not (logged, rate-limited, as one :meth:`Broker.reply`
        raises). An exception raised costs every reply of the batch.
        """
        ...


@runtime_checkable
class Acknowledging(Protocol):
    """Optional: a broker that must hear how each job it delivered ended (a durable queue).

    The service acknowledges every payload delivered with an :attr:`Origin.receipt` exactly
    once: when its job ends, or when the message is rejected or dropped. Acknowledgements
    come in batches; until one arrives the broker keeps the job's lease alive.
    """

    async def acknowledge(self, settled: Sequence[Settled]) -> None:
        """Record how these deliveries ended (at least one; in one round trip if possible)."""
        ...


@runtime_checkable
class Leasing(Protocol):
    """Optional: a durable broker whose deliveries are held under leases that can run out.

    A delivery may wait in the service (claimed ahead of a free worker) while its lease runs
    out: the service stopped, or the broker could not renew it, and another service may have
    taken the job back. Before such a delivery starts, or is sent to a busy worker to start
    after its task, the service asks :meth:`held_until`; one no longer held is settled
    ``abandoned`` instead of run, and a worker given one ahead does not start it past that
    time: it gives it back, and the service checks it again as a waiting job.
    """

    def held_until(self, receipt: str) -> float:
        """Until when (``time.monotonic()``) the delivery of *receipt* may start.

        Its lease surely holds until then. ``0.0`` when it is not held any more.
        """
        ...


TICK_OFFER_WINDOW: Final = 1800.0
"""Seconds after its time that a durable schedule's tick may still be offered (to
:meth:`OncePerTick.submit_tick`), at most: no attempt starts later (nor once the next tick
is due), and one attempt lasts at most ``producers.TICK_ATTEMPT_LIMIT``. A broker must
remember each tick far longer (pg_queue: twice as long), or a late attempt stores it
again."""


@runtime_checkable
class OncePerTick(Protocol):
    """Optional: a durable broker that runs a scheduled task once per tick across all hosts.

    ``producers.scheduled`` entries whose task's queue is one of :attr:`queues` are handed
    to :meth:`submit_tick` at every tick instead of being run locally.
    """

    queues: Collection[str]
    """The queues the broker stores."""

    async def submit_tick(
        self,
        task: str,
        tick: int,
        queue: str,
        message: dict[str, Any],
        max_attempts: int | None = None,
        *,
        former: Sequence[int] = (),
    ) -> bool:
        """Store *message* for *queue*, unless a service already did for (*task*, *tick*).

        *former*: the other numbers older releases gave this tick. Record them all, and
        store the message only when none was recorded (a fleet mixing releases).

        *max_attempts* is the one the task was registered with (``None``: the queue's).
        A call that raises is made again, until the tick's give-up time (see
        ``producers.run_once_per_tick``; a call may be repeated after it stored the tick):
        remember a tick far longer than that, so that a repeated call stores nothing.

        Returns whether this call stored it.
        """
        ...


class BrokerNotReady(DispatcherError):
    """A broker refuses to start until something is done: the message says what, in a line.

    A factory raises it (e.g. the pg_queue tables are missing: run ``dispatcherctl
    migrate``); the service then exits with status 2 before it listens, printing it.
    """


class StartRefused(DispatcherError):
    """A broker (or the metrics server) cannot start, for a reason waiting cannot cure.

    An address another service holds, a path it may not create: raised before it says it
    started, it stops the service's start (exit status 2) with the reason, in a line,
    rather than let it run without that broker.
    """


class Capacity(Protocol):
    """How much work the service can take now: durable brokers claim no more than that."""

    def free(self, ahead: int = 0) -> int:
        """Jobs the service would take now from this broker.

        That is its free worker places, less the jobs of this broker waiting for one, plus
        *ahead*: how many jobs the broker lets wait for a worker, so that the next is at
        hand. Other sources' jobs waiting do not count, as the service's queue takes turns
        between sources; while some wait and none of this broker's, it is at least 1.
        """
        ...

    async def wait_free(self, ahead: int = 0) -> int:
        """Return :meth:`free` (with *ahead*) as soon as it is more than zero."""
        ...

    def busy_for(self) -> float:
        """Seconds every worker place has been taking a job: ``0`` while one is free.

        The age of the youngest running job once none is free: jobs let wait now wait at
        least until one of those ends, and the longer they have run, the longer they may
        still run. A broker holding jobs ahead by their pace holds fewer as this grows.
        """
        ...


@dataclass(frozen=True)
class BrokerContext:
    """What the service gives a broker factory besides the broker's own config section."""

    node_id: str
    """This service's node id (control replies carry it)."""
    settings: Settings
    """The whole config (a broker may default to another section, e.g. a conninfo)."""
    stats: ServiceStats
    """The service's counters: count a payload refused before delivery with
    ``stats.rejected[reason] += 1``."""
    capacity: Capacity
    """Free capacity, for brokers that pull work (see :class:`Capacity`)."""
    declared_attempts: Callable[[], Mapping[str, int]] = lambda: {}
    """The ``max_attempts`` the registered tasks declare (``@task(max_attempts=...)``), by
    task name, as of now: empty until the first worker says which tasks are registered, and
    changed by a reload. A durable broker applies them to jobs stored with its default."""

    @property
    def application_name(self) -> str:
        """The ``application_name`` for a broker's PostgreSQL connections.

        It names the service but no channel: control clients over pg_notify count only the
        connections named with the channels they send on (see
        :func:`~dispatcher.schema.service_application_name`).
        """
        return service_application_name(self.node_id)


BrokerFactory = Callable[[Mapping[str, Any], BrokerContext], Broker]
"""Builds a broker: ``factory(options, context)``; *options* is its config section, checked
against its schema, less the keys the service handles (``allow_control``)."""


class BrokerBase:
    """A base for brokers: implement :meth:`receive` (and :meth:`reply`, :meth:`close`).

    :meth:`run` runs :meth:`receive` inside a cancel scope that :meth:`stop_receiving`
    cancels, then waits (replies may still be sent) until the service cancels it, and
    calls :meth:`close` on the way out.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._receiving: anyio.CancelScope | None = None
        self._stopped = False

    async def run(
        self, deliver: Deliver, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """See :meth:`Broker.run`."""
        try:
            with anyio.CancelScope() as self._receiving:
                if self._stopped:
                    self._receiving.cancel()
                await self.receive(deliver, task_status=task_status)
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await self.close()

    def stop_receiving(self) -> None:
        """See :meth:`Broker.stop_receiving`."""
        self._stopped = True
        if self._receiving is not None:
            self._receiving.cancel()

    async def receive(
        self, deliver: Deliver, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Receive payloads until cancelled; call ``task_status.started()`` first."""
        raise NotImplementedError

    async def reply(self, reply_to: str, reply: Mapping[str, Any]) -> None:
        """Send a control reply; by default the broker has no way to."""
        raise NotImplementedError(f"the {self.name} broker cannot send replies")

    async def close(self) -> None:
        """Release what the broker holds (connections, files); called once, shielded."""

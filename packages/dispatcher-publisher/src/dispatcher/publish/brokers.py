"""The publishing side of a broker: how task and control messages leave a publisher.

Every broker a service receives from has a counterpart here, built by its factory,
``factory(options, settings) -> PublishBroker``, from its config section (``brokers.<name>``,
less ``allow_control``) and the whole config. The SDK picks one per message (see
:mod:`dispatcher.publish.routing`): a queue one broker claims goes through it, anything
else through ``publish.default_broker``; control commands go through
``publish.default_control_broker``.

Payloads are prepared before a broker sees them: the message's JSON text (in a signed
envelope when the config has a key), or its chunk envelopes when the text is over
:data:`~dispatcher.schema.MAX_NOTIFY_PAYLOAD_BYTES`. A broker sends them as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Protocol, TypeGuard, runtime_checkable

from dispatcher.config import Settings
from dispatcher.publish.submission import Submission

Outgoing = tuple[str, str]
"""One payload to send: ``(queue, payload)``."""


class ReplyCollector(Protocol):
    """Where a broker puts the replies to a control command (a ``ControlResult``)."""

    @property
    def replies(self) -> Sequence[Mapping[str, Any]]:
        """The replies taken so far."""
        ...

    expected: int
    """How many replies to wait for: set by the broker when the caller gave no number."""
    expected_nodes: list[str]
    """The node ids of the services expected to answer, when the broker can tell."""
    uncertain_nodes: list[str]
    """The node ids of the services that may or may not get the command, when the broker
    cannot tell: waited for too, but not for long (see :func:`wait_until`)."""
    unlisted_nodes: list[str]
    """The node ids among :attr:`expected_nodes` of services that do not say where they
    listen (an older release's): expected whatever the channel, they may not get it."""
    through_pooler: bool
    """Whether the replies were waited for through a pooler (the broker found one): one in
    transaction mode loses them."""

    @property
    def complete(self) -> bool:
        """Whether every reply waited for has come (see ``ControlResult.complete``)."""
        ...

    @property
    def settled(self) -> bool:
        """Whether the uncertain services answered as well (see ``ControlResult.settled``)."""
        ...

    def add(self, payload: str | bytes) -> None:
        """Take one payload that arrived on the reply destination (checked, or skipped)."""
        ...


UNCERTAIN_GRACE = 0.25
"""Seconds a control client waits at least for services that may or may not get its
command, once those known to get it answered (see :func:`wait_until`)."""


def wait_until(replies: ReplyCollector, sent: float, deadline: float, now: float) -> float:
    """Until when (``time.monotonic()``) to wait for more replies to a command sent at *sent*.

    *deadline* (the caller's timeout), or earlier when the only services yet to answer are
    uncertain ones (``replies.uncertain_nodes``): once the services known to get the command
    answered, the others get as long again as those took (at least :data:`UNCERTAIN_GRACE`).
    Without any service known to get it, uncertain ones are waited for up to *deadline*.
    """
    if replies.complete and replies.expected_nodes:
        return min(deadline, now + max(UNCERTAIN_GRACE, now - sent))
    return deadline


class PublishBroker(Protocol):
    """Sends task and control messages to services, and collects control replies."""

    @property
    def name(self) -> str:
        """The broker's name: its key under ``brokers``."""
        ...

    @property
    def default_queue(self) -> str | None:
        """The queue a task goes to when neither the call nor ``@task`` names one."""
        ...

    @property
    def queues(self) -> Collection[str]:
        """Queues that always go through this broker, whatever the default broker.

        pg_notify's are its channels; may be empty.
        """
        ...

    def send(self, messages: Sequence[Outgoing], connection: object | None = None) -> None:
        """Send *messages* in order (in one round trip where the broker can).

        *connection* is the caller's database connection, to send inside its transaction;
        a broker that cannot raises ``TypeError``. Raise ``BrokerUnavailable`` when the
        destination cannot be reached: nothing, or not everything, was sent.
        """
        ...

    async def asend(self, messages: Sequence[Outgoing], connection: object | None = None) -> None:
        """:meth:`send` for asyncio code (it must not block the event loop)."""
        ...

    def control_with_reply(
        self,
        text: str,
        reply_to: str,
        replies: ReplyCollector,
        *,
        queue: str | None,
        expected_replies: int | None,
        timeout: float,
    ) -> None:
        """Send the control message *text* (whole, unchunked) and collect the replies.

        Make *reply_to* (a fresh name, also in the message) a destination the services can
        reply to, send the message to *queue* (``None``: this broker's default), and
        :meth:`ReplyCollector.add` each payload arriving there until
        ``len(replies.replies) >= replies.expected`` or *timeout* seconds have passed. Set
        ``replies.expected`` to *expected_replies*, or when it is ``None`` to the number of
        services the broker knows to be listening (``1`` when it cannot tell). A broker
        that finds services that may or may not be listening puts them in
        ``replies.uncertain_nodes`` and waits while ``replies.settled`` is false, until
        :func:`wait_until`.
        """
        ...

    async def acontrol_with_reply(
        self,
        text: str,
        reply_to: str,
        replies: ReplyCollector,
        *,
        queue: str | None,
        expected_replies: int | None,
        timeout: float,
    ) -> None:
        """:meth:`control_with_reply` for asyncio code."""
        ...


@runtime_checkable
class JobBroker(PublishBroker, Protocol):
    """A broker that stores each task as a job (a durable queue) and so takes it whole.

    The SDK hands it whole submissions instead of payloads: the message's JSON text (never
    signed nor chunked), its uuid, task and options, and the job's ``max_attempts``. Only
    tasks for a queue it claims (:attr:`PublishBroker.queues`) are prepared that way.
    """

    def send_jobs(self, jobs: Sequence[Submission], connection: object | None = None) -> None:
        """Store *jobs* in one round trip and wake the services, all in one transaction.

        *connection* is the caller's connection: the jobs join its transaction (they exist
        once it commits, never if it rolls back). Raise ``BrokerUnavailable`` when the
        destination cannot be reached: then nothing was stored.
        """
        ...

    async def asend_jobs(
        self, jobs: Sequence[Submission], connection: object | None = None
    ) -> None:
        """:meth:`send_jobs` for asyncio code."""
        ...


_job_broker_types: dict[type, bool] = {}


def is_job_broker(broker: PublishBroker) -> TypeGuard[JobBroker]:
    """Tell whether *broker* is a :class:`JobBroker` (known per class: a protocol check is slow)."""
    kind = type(broker)
    known = _job_broker_types.get(kind)
    if known is None:
        known = _job_broker_types[kind] = isinstance(broker, JobBroker)
    return known


PublishBrokerFactory = Callable[[Mapping[str, Any], Settings], PublishBroker]
"""Builds the publishing side of a broker: ``factory(options, settings)``."""

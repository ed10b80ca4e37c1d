"""A service's brokers, and what goes back to them: control replies and settled outcomes.

Built from the registry (the configured built-ins and plug-ins); each runs in a task of the
service's own (:meth:`ServiceBrokers.steps`), stops receiving as the service stops, and
takes its last outcomes before the service ends (:data:`SETTLE_WAIT`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Coroutine
from typing import Any, Final

import anyio

from dispatcher.server.brokers.base import BrokerContext, Capacity, Deliver, Leasing, StartRefused
from dispatcher.server.brokers.registry import create_brokers
from dispatcher.server.brokers.replies import ReplyRouter
from dispatcher.server.brokers.runner import run_broker
from dispatcher.server.jobs import Job
from dispatcher.server.settlement import Settlements
from dispatcher.server.stats import BrokerHealth

SETTLE_WAIT: Final = 10.0
"""Seconds a stop waits for each durable broker to take the last outcomes (a broker whose
database does not answer gives up sooner, and says what it could not write)."""

Step = Callable[..., Coroutine[Any, Any, None]]
"""A task the service starts (``task_group.start``): it says when it has started."""


class ServiceBrokers:
    """The brokers built with *context*, each with ``capacity_of(name)`` as its capacity."""

    def __init__(self, context: BrokerContext, capacity_of: Callable[[str], Capacity]) -> None:
        self.brokers = create_brokers(context, capacity_of)
        self.replies = ReplyRouter(self.brokers)
        """Sends control replies through the broker a message came from."""
        self.settlements = Settlements(self.brokers)
        """Tells the brokers that must hear it how each of their deliveries ended."""

    def lease_ends(self) -> Callable[[Job], float] | None:
        """Until when each job may start (see ``Leasing``), when a broker leases its jobs."""
        leasing = {b.name: b for b in self.brokers if isinstance(b, Leasing)}
        if not leasing:
            return None
        return lambda job: (
            leasing[job.broker].held_until(str(job.receipt)) if job.broker in leasing else math.inf
        )

    def steps(
        self,
        deliver: Deliver,
        on_refused: Callable[[StartRefused], None],
        stopping: anyio.Event,
        health: Callable[[str], BrokerHealth],
    ) -> list[tuple[str, Step]]:
        """What to start, in order, by name: the replies, the settlements, each broker.

        Each broker hands its payloads to *deliver*, says a late refusal to *on_refused*,
        and reports to its ``health(name)``; it is not run again once *stopping* is set.
        """
        steps: list[tuple[str, Step]] = [
            ("control-replies", self.replies.run),
            ("settlements", self.settlements.run),
        ]
        for broker in self.brokers:
            running = functools.partial(
                run_broker,
                broker,
                deliver,
                on_refused=on_refused,
                stopping=stopping,
                health=health(broker.name),
            )
            steps.append((f"broker:{broker.name}", running))
        return steps

    def stop_receiving(self) -> None:
        """The service begins to stop: no broker takes in anything more."""
        for broker in self.brokers:
            broker.stop_receiving()

    async def flush(self) -> None:
        """Hand the last outcomes to the brokers (up to :data:`SETTLE_WAIT` s each)."""
        await self.settlements.flush(SETTLE_WAIT)

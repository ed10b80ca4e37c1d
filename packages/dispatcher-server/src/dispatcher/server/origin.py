"""Where a received message comes from: its broker, and how to answer a control message there."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from dispatcher.config import BrokerName

ReplySink = Callable[[str, dict[str, Any]], None]
"""Sends a control reply back: ``sink(reply_to, reply)``."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a payload came from: its broker, its channel or queue, how to answer it there.

    A broker makes one per channel (or connection) and hands it with every payload it
    delivers from there; a durable broker makes one per delivery, with its :attr:`receipt`.
    """

    broker: BrokerName | None
    """The broker's name (``pg_notify``, ``socket``, a plug-in's); ``None`` for messages made
    inside the service (producers, the ``run`` command), which need no signature."""
    reply: ReplySink | None = None
    """Sends control replies back over the same connection (the socket does); ``None`` means
    the service queues them for the broker's ``reply(reply_to, reply)``."""
    channel: str = ""
    """The channel, queue or connection the payload arrived on, as logs and bound tasks
    name it (``socket:3`` for the third socket connection)."""
    receipt: str | None = None
    """Identifies this delivery to a durable broker's ``acknowledge()``; ``None`` for brokers
    that deliver at most once."""
    scheduled_by_broker: bool = False
    """The broker has applied the message's ``delay`` and ``on_duplicate`` itself (pg_queue
    does, in its table, across hosts): the service runs the job as it comes, neither
    holding it for its delay again nor passing it through its own duplicate gate."""
    authenticated: bool = False
    """The broker's own access control vouches for who sent it (pg_queue: only roles with
    INSERT on the jobs table can add a row), so ``security.require_signed`` does not apply.
    Signed envelopes are still verified when they come this way."""
    stored_as: tuple[str, str] | None = None
    """The ``(uuid, task)`` a durable broker stored the message under (pg_queue: the row's
    columns, which listings and cancels go by): a task message must agree with them."""


PG_NOTIFY: Final = Origin("pg_notify")
"""Messages received by the pg_notify listener."""

INTERNAL: Final = Origin(None)
"""Messages made inside the service."""

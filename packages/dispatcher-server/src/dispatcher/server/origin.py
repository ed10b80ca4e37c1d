"""Where a received message comes from: its broker, and how to answer a control message there."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from dispatcher.config import BrokerName

ReplySink = Callable[[str, dict[str, Any]], None]
"""Sends a control reply back: ``sink(reply_to, reply)``."""


class StoredRow(NamedTuple):
    """The columns a durable broker stored a message under, which its message must agree with."""

    uuid: str
    """The row's uuid: what listings, ``get_job()`` and a cancel by uuid go by."""
    task: str
    """The row's task: the message's task, or ``control:<command>`` for a control message."""
    on_duplicate: str | None = None
    """The row's on_duplicate mode (``None`` for parallel), which the table enforces."""
    delay: float | None = None
    """How long after its creation the row may run (``run_after - created_at``, in seconds),
    ``None`` when not known: at least the message's delay, which the table applies, less the
    slack for clocks that differ (:data:`~dispatcher.server.intake_rows.DELAY_SLACK`)."""


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
    answering: Callable[[], Callable[[], None]] | None = None
    """Told that a control message from here is being answered in a task of its own (a
    command may take a while); it returns what to call once that task has ended, its reply
    (if any) sent through :attr:`reply`. The socket sends a line's replies once they are
    all there."""
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
    INSERT on the jobs table can add a row), so ``security.require_signed: [task]`` does not
    apply to its task messages. Its control messages are not vouched for: they must be signed
    where ``require_signed`` lists ``control``, and are checked for their age and replay as a
    NOTIFY message is. Signed task messages are still verified when they come this way; a
    durable delivery (with a :attr:`receipt`) of one is not checked for its age or replay, as
    its retries and a late first run would fail them."""
    stored_as: StoredRow | None = None
    """The columns a durable broker stored the message under (pg_queue: the row's, which
    listings and cancels go by, and which apply its delay and on_duplicate): the message
    must agree with them."""
    attempt: int = 0
    """Which attempt of the job this delivery is (``1`` first), for a durable broker that
    counts them (its log records say it); ``0``: not counted."""


PG_NOTIFY: Final = Origin("pg_notify")
"""Messages received by the pg_notify listener."""

INTERNAL: Final = Origin(None)
"""Messages made inside the service."""

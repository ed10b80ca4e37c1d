"""What one refresh of ``dispatcherctl top`` collected, and the rates two of them give.

A :class:`Poll` holds the services' ``status`` replies and the durable queues' depth
(:mod:`dispatcher.server.ctl_top_poll` collects it); :func:`rates` compares the counters
of two polls. The screens (:mod:`dispatcher.server.ctl_top_render`,
:mod:`dispatcher.server.ctl_top_plain`) are drawn from them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dispatcher.server.ctl_top_fields import number
from dispatcher.server.stats import QueueDepth


@dataclass(frozen=True)
class Poll:
    """What one refresh collected: the services' ``status`` replies and the queues' depth."""

    at: float
    """When it was collected, on the monotonic clock (rates divide by differences of it)."""
    wall: float
    """When it was collected, in seconds since the epoch (failures are dated against it)."""
    replies: list[dict[str, Any]] = field(default_factory=list)
    """One ``status`` reply per service that answered."""
    missing: list[str] = field(default_factory=list)
    """Node ids of services found connected that did not answer in time."""
    depths: Mapping[str, QueueDepth] | None = None
    """The durable queues' depth, by queue; ``None`` without ``brokers.pg_queue``."""
    notes: list[str] = field(default_factory=list)
    """Problems met while collecting, one line each."""
    status: int = 0
    """The exit status this poll alone gives: 0 when every expected service answered, 1
    when some did not (or none is connected, or the database cannot be reached), 2 when
    the services could not be asked (the config names no channel to ask them on)."""


@dataclass(frozen=True)
class Rates:
    """Tasks per second one service received and finished between two polls."""

    received: float
    finished: float


def node_of(reply: Mapping[str, Any]) -> str:
    """The node id a reply carries, as text."""
    return str(reply.get("node_id", "?"))


def rates(previous: Poll | None, current: Poll) -> dict[str, Rates]:
    """Each service's rates between *previous* and *current*, by node id.

    A service missing from either poll, one that restarted in between (its uptime went
    down, or a counter did), or one without counters gets none.
    """
    if previous is None or current.at <= previous.at:
        return {}
    seconds = current.at - previous.at
    before = {node_of(reply): reply for reply in previous.replies}
    found: dict[str, Rates] = {}
    for reply in current.replies:
        old = before.get(node_of(reply))
        now, then = _counters(reply), None if old is None else _counters(old)
        if now is None or then is None or any(a < b for a, b in zip(now, then, strict=True)):
            continue
        found[node_of(reply)] = Rates(
            received=(now[1] - then[1]) / seconds, finished=(now[2] - then[2]) / seconds
        )
    return found


def _counters(reply: Mapping[str, Any]) -> tuple[float, float, float] | None:
    """A reply's uptime, tasks received and tasks finished; ``None`` if one is missing."""
    uptime, received = number(reply.get("uptime")), number(reply.get("received"))
    finished = _finished_total(reply)
    if uptime is None or received is None or finished is None:
        return None
    return uptime, received, finished


def _finished_total(reply: Mapping[str, Any]) -> float | None:
    counts = reply.get("finished")
    if not isinstance(counts, dict):
        return None
    numbers = [number(n) for n in counts.values()]
    return sum(n for n in numbers if n is not None)

"""Where a received message comes from: its broker, and how to answer a control message there."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from dispatcher.config.settings import BrokerName

ReplySink = Callable[[str, dict[str, Any]], None]
"""Sends a control reply back: ``sink(reply_to, reply)``."""


@dataclass(frozen=True)
class Origin:
    """The broker a message came through (one per broker, or per socket connection)."""

    broker: BrokerName | None
    """``pg_notify`` or ``socket``; ``None`` for messages made inside the service (producers,
    the ``run`` command), which need no signature."""
    reply: ReplySink | None = None
    """Sends control replies back over the same connection; ``None`` means publish them on
    their ``reply_to`` channel over pg_notify."""


PG_NOTIFY: Final = Origin("pg_notify")
"""Messages received by the pg_notify listener."""

INTERNAL: Final = Origin(None)
"""Messages made inside the service."""

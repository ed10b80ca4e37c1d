"""Brokers: how payloads reach the service and how control replies leave it.

Built-ins: :mod:`~dispatcher.server.brokers.pg_notify` (PostgreSQL LISTEN/NOTIFY),
:mod:`~dispatcher.server.brokers.socket` (a local unix socket) and
:mod:`~dispatcher.server.brokers.pg_queue` (durable queues in PostgreSQL tables). Others
are plug-ins, found through the entry-point group ``dispatcher.brokers`` (see
:mod:`~dispatcher.server.brokers.registry` and ``docs/brokers.md``). A plug-in implements
:class:`Broker` (most simply by subclassing :class:`BrokerBase`); a durable one also
:class:`Acknowledging`; one that can send many replies in one round trip,
:class:`ReplyingInBatches`.
"""

from dispatcher.server.brokers.base import (
    Acknowledging,
    Broker,
    BrokerBase,
    BrokerContext,
    BrokerFactory,
    BrokerNotReady,
    Capacity,
    Deliver,
    OncePerTick,
    ReplyingInBatches,
    Settled,
)
from dispatcher.server.origin import Origin, ReplySink

__all__ = [
    "Acknowledging",
    "Broker",
    "BrokerBase",
    "BrokerContext",
    "BrokerFactory",
    "BrokerNotReady",
    "Capacity",
    "Deliver",
    "OncePerTick",
    "Origin",
    "ReplySink",
    "ReplyingInBatches",
    "Settled",
]

"""Letting go of the SDK's own connections to databases no config in use names any more.

A process that calls ``setup()`` again with other databases (a reload, a test suite) would
otherwise keep its connections to the old ones open for good: they are closed once the
statement running on them ends, unless a ``using()`` block (or a batch) still has a config
naming them. A caller that needs one again opens a new one.
"""

from __future__ import annotations

from dispatcher.config import Settings
from dispatcher.config.current import overriding_configs, when_replaced
from dispatcher.publish import provider_registry_async, provider_registry_sync


def databases(settings: Settings) -> set[str]:
    """The conninfos of the SDK's own connections under *settings* (its built-in brokers')."""
    brokers = settings.brokers
    return {s.conninfo for s in (brokers.pg_notify, brokers.pg_queue) if s is not None}


def retire_unused(settings: Settings) -> None:
    """Let go of the SDK's own connections that neither *settings* nor a config in use needs."""
    keep = databases(settings)
    for other in overriding_configs():
        keep |= databases(other)
    provider_registry_sync.retire_providers(keep)
    provider_registry_async.retire_providers(keep)


when_replaced(retire_unused)

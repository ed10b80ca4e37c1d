"""The SDK's own connections, one provider per conninfo, from synchronous code.

Generated from ``provider_registry_async.py`` by ``tools/async_to_sync.py``; do not edit.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Collection

from dispatcher.config.forking import at_fork
from dispatcher.publish.event_loops import sync_in_loop
from dispatcher.publish.provider_sync import ConnectionProvider

_providers: dict[str, ConnectionProvider] = {}
_retired: list[ConnectionProvider] = []
"""Providers let go of (no config in use names their conninfo) that still hold connections:
each event loop lets go of its own at its next submission (see :func:`retire_providers`)."""
# Re-entrant: a signal handler submitting in the thread it interrupted may find it making
# the provider.
_providers_lock = threading.RLock()


def _after_fork_in_child() -> None:
    # A lock held by another thread at the fork would stay held forever in the child.
    global _providers_lock
    _providers_lock = threading.RLock()
    for provider in _providers.values():
        provider.after_fork_in_child()


at_fork(after_in_child=_after_fork_in_child)


def shared_provider(conninfo: str) -> ConnectionProvider:
    """The SDK's own connection to *conninfo*, shared by every caller in this process."""
    if _retired:
        let_go_retired()
    provider = _providers.get(conninfo)
    if provider is not None:
        return provider
    with _providers_lock:
        provider = _providers.get(conninfo)
        if provider is None:
            provider = _providers[conninfo] = ConnectionProvider(conninfo)
        return provider


def retire_providers(keep: Collection[str]) -> None:
    """Let go of the SDK's own connections to conninfos not in *keep*, closed once free.

    For a config replaced by one that names other databases: its connections would
    otherwise stay open for good. Those of the caller's event loop (of the process, for the
    sync twin) are closed now, once the statement running on them ends; those of other
    event loops at their next submission. A caller that still needs one opens a new one.
    """
    with _providers_lock:
        unused = [provider for conninfo, provider in _providers.items() if conninfo not in keep]
        for provider in unused:
            del _providers[provider.conninfo]
        _retired.extend(unused)
    if sync_in_loop():  # (else each event loop lets go of its own at its next submission)
        let_go_retired()


def let_go_retired() -> None:
    """Let go of the caller's connections of the providers retired (:func:`retire_providers`)."""
    for provider in list(_retired):
        if provider.let_go_here():
            with contextlib.suppress(ValueError):  # (another caller's, just now)
                _retired.remove(provider)


def close_connections() -> None:
    """Close the SDK's own connections (they re-open on the next submission).

    Call it when an application shuts down, or in tests between event loops. A signal
    handler may call it (it waits for no lock the thread it interrupted may hold: what is
    in use then is closed once it is free).
    """
    # Without _providers_lock, which the interrupted thread may hold (in shared_provider):
    # copying the dict is atomic, and a provider being made has no connection yet.
    providers = list(_providers.values())
    for provider in providers:
        provider.close()

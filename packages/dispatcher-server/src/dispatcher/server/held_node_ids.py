"""The node ids the services of this process hold, so that each service takes one of its own.

A service whose config sets no ``service.node_id`` takes the first id (``$DISPATCHER_NODE_ID``,
else the default, numbered after the first service's: ``-2``, ``-3``...) that no other
service of this process holds, and holds it until it ends, or is no more.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

from dispatcher.config import Settings
from dispatcher.server.node_ids import node_id

_IDS_TAKEN: set[str] = set()
"""The node ids this process's services took (not from their config), while they last."""


def take_node_id(settings: Settings, holder: object) -> tuple[str, Callable[[], object] | None]:
    """The node id of a new service *holder* of this process, and what gives it back.

    Without ``service.node_id``, the id (``$DISPATCHER_NODE_ID``, else the default) is the
    first, numbered after the first service's, that no other service of this process
    holds; it is now held, until the callable returned is called or *holder* is no more.
    With ``service.node_id``, that id, held by none (no callable).
    """
    if settings.service.node_id:
        return settings.service.node_id, None
    instance = 1
    while (taken := node_id(settings, instance=instance)) in _IDS_TAKEN:
        instance += 1
    _IDS_TAKEN.add(taken)
    return taken, weakref.finalize(holder, _IDS_TAKEN.discard, taken)

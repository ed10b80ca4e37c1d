"""Hooks run around ``os.fork()``, where the platform forks.

The SDK resets its locks, connections and caches in a forked child (a lock another thread
held at the fork would stay held for ever there). Windows has no ``fork()``, nor
``os.register_at_fork``: there a child process starts afresh and needs no such reset, and
:func:`at_fork` registers nothing, so that the SDK imports and runs there too.
"""

from __future__ import annotations

import os
from collections.abc import Callable


def at_fork(
    *,
    before: Callable[[], object] | None = None,
    after_in_child: Callable[[], object] | None = None,
) -> None:
    """Register *before* and *after_in_child* as :func:`os.register_at_fork` does.

    Nothing is registered where the platform cannot fork (Windows).
    """
    register = getattr(os, "register_at_fork", None)
    if register is None:
        return
    if before is not None:
        register(before=before)
    if after_in_child is not None:
        register(after_in_child=after_in_child)

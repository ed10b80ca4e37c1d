"""The signal that the pool changed: a worker finished a task or went away.

Only the shutdown waits for it (until no worker is busy, or none is left); signalling it
when no one waits costs next to nothing, as it is signalled at the end of every task.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio


class PoolChanges:
    """Set when a worker finishes a task or goes away, while someone waits for that."""

    def __init__(self) -> None:
        self._changed: anyio.Event | None = None

    def signal(self) -> None:
        """A worker finished a task or went away: wake whoever waits."""
        if self._changed is not None:  # only shutdown waits for it: keep the hot path cheap
            self._changed.set()
            self._changed = None

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Return once *condition* holds, looking again at each change."""
        while not condition():
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()

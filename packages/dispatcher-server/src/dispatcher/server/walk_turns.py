"""How a walk over the jobs held shares the event loop: turns of a few milliseconds, rests.

A control command that looks at every job held (``running``, ``cancel``, ``status``) may
walk a backlog of a million. Pausing every so many jobs made a turn of the event loop last
as long as those jobs took (reading each message for an ``args`` filter, 1,000 jobs took
up to 25 ms on a loaded machine), and what the rest of the service does a step per turn (a
control reply's NOTIFY takes about ten: wake-ups, writes, reads) waited a walk's turn at
every step: ``alive`` took seconds behind a burst of walks. A walk now pauses by the clock,
after :data:`WALK_TURN` s, and rests for :data:`WALK_REST` s, long enough for a round trip
to the local database to run all its steps, rather than for one turn of the loop: it walks
some 20 % slower, and the rest of the service answers in milliseconds meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

import anyio

WALK_TURN: Final = 0.005
"""Seconds a walk holds the event loop before it lets the rest of the service run."""

WALK_REST: Final = 0.001
"""Seconds a walk then lets the rest of the service run (several turns of the loop)."""


class Turns:
    """The clock of one walk: :meth:`due` once it has held the event loop for its turn.

    Once *stopping* is set (the service stops), a walk that rests goes on at once, and
    rests no more: what it does is among the last things the stop waits for.
    """

    def __init__(
        self,
        stopping: anyio.Event,
        length: float = WALK_TURN,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._stopping = stopping
        self._length = length
        self._clock = clock
        self._began = clock()

    def due(self) -> bool:
        """Whether the walk has held the event loop for its turn (one read of the clock)."""
        return self._clock() - self._began >= self._length

    async def pause(self) -> None:
        """Let the rest of the service run for :data:`WALK_REST` s; the next turn begins."""
        if self._stopping.is_set():
            await anyio.sleep(0)
        else:
            with anyio.move_on_after(WALK_REST):
                await self._stopping.wait()
        self._began = self._clock()

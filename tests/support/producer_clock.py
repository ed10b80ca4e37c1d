"""A simulated wall clock for ``dispatcher.server.producers`` (durable schedule ticks)."""

from __future__ import annotations

import types
from collections.abc import Callable

import anyio
import pytest

from dispatcher.server import producers


class FakeClock:
    """The wall clock and the sleeps of ``dispatcher.server.producers``, simulated.

    A sleep moves the clock on at once (then lets other tasks run), and a test's broker may
    move it on itself (an attempt that took long). Attempt limits stay on the real clock.
    The wall clock may be stepped (:meth:`step_at`): the monotonic clock, which sleeps
    follow, is not.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, now: float) -> None:
        self.now = now
        self.stepped = 0.0
        """How far the wall clock was stepped in all (the monotonic clock was not)."""
        self._steps: list[tuple[float, float, Callable[[], None]]] = []
        fake_anyio = types.SimpleNamespace(
            sleep=self.sleep, fail_after=anyio.fail_after, Event=anyio.Event
        )
        monkeypatch.setattr(producers, "anyio", fake_anyio)
        monkeypatch.setattr(
            producers, "time", types.SimpleNamespace(time=self.time, monotonic=self.monotonic)
        )

    def time(self) -> float:
        """The simulated time (seconds since the epoch)."""
        return self.now

    def monotonic(self) -> float:
        """The simulated monotonic clock: the wall clock less its steps."""
        return self.now - self.stepped

    def step_at(self, when: float, by: float, then: Callable[[], None] = lambda: None) -> None:
        """Step the wall clock by *by* seconds once a sleep takes it past *when*.

        Forwards (an NTP step, a virtual machine resumed after a pause) or backwards; *then*
        is called right after the step, while the sleep goes on.
        """
        self._steps.append((when, by, then))
        self._steps.sort(key=lambda step: step[0])

    async def sleep(self, seconds: float) -> None:
        """Move the clock on by *seconds*, and by every step passed meanwhile."""
        end = self.now + max(0.0, seconds)
        while self._steps and self._steps[0][0] <= end:
            when, by, then = self._steps.pop(0)
            self.now = max(self.now, when) + by
            end += by
            self.stepped += by
            then()
        self.now = end
        await anyio.sleep(0)

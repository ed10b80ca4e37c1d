"""A simulated wall clock for ``dispatcher.server.producers`` (durable schedule ticks)."""

from __future__ import annotations

import types

import anyio
import pytest

from dispatcher.server import producers


class FakeClock:
    """The wall clock and the sleeps of ``dispatcher.server.producers``, simulated.

    A sleep moves the clock on at once (then lets other tasks run), and a test's broker may
    move it on itself (an attempt that took long). Attempt limits stay on the real clock.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, now: float) -> None:
        self.now = now
        fake_anyio = types.SimpleNamespace(
            sleep=self.sleep, fail_after=anyio.fail_after, Event=anyio.Event
        )
        monkeypatch.setattr(producers, "anyio", fake_anyio)
        monkeypatch.setattr(
            producers, "time", types.SimpleNamespace(time=self.time, monotonic=self.time)
        )

    def time(self) -> float:
        """The simulated time (seconds since the epoch)."""
        return self.now

    async def sleep(self, seconds: float) -> None:
        """Move the clock on by *seconds*."""
        self.now += max(0.0, seconds)
        await anyio.sleep(0)

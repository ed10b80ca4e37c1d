"""Schedules while the wall clock is stepped (an NTP step, a virtual machine resumed).

Sleeps follow the monotonic clock, which such a step does not move: a schedule on the wall
clock must notice the step soon, neither running late by the step's length nor making up
the runs it jumped over. Periods run by one service stay on their own (monotonic) grid.
"""

from __future__ import annotations

import types
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import anyio
import pytest

from dispatcher.config import Settings, load_settings
from dispatcher.server import timetables
from dispatcher.server.producers import WALL_CLOCK_CHECK, run_once_per_tick, run_schedule
from dispatcher.server.timetables import ScheduleBoard
from support.producer_clock import FakeClock

TASK = "app.tasks.nightly"
HOUR = 3600.0
DAY = 24 * HOUR


def settings(schedule: float | str) -> Settings:
    """A config with one scheduled entry for TASK."""
    scheduled = {TASK: {"schedule": schedule}}
    return load_settings({"version": 1, "producers": {"scheduled": scheduled}})


def utc(day: int, hour: int, minute: int = 0) -> float:
    """A time of December 2030, UTC, in seconds since the epoch."""
    return datetime(2030, 12, day, hour, minute, tzinfo=UTC).timestamp()


class Runs:
    """Records the wall-clock time of each run until *wanted* runs were made."""

    def __init__(self, clock: FakeClock, wanted: int) -> None:
        self.clock = clock
        self.wanted = wanted
        self.times: list[float] = []
        self.enough = anyio.Event()

    def record(self) -> None:
        self.times.append(self.clock.now)
        if len(self.times) >= self.wanted:
            self.enough.set()

    def submit(self, message: dict[str, Any], source: str) -> str:
        """As ``Intake.submit``: a schedule run by this service alone."""
        self.record()
        return "uuid"

    @property
    def queues(self) -> Sequence[str]:
        """As a durable broker's: the one queue ``q``."""
        return ("q",)

    async def submit_tick(self, task: str, tick: int, queue: str, *args: Any, **kw: Any) -> bool:
        """As a durable broker's: the tick is stored."""
        self.record()
        return True


async def run_here(runs: Runs, config: Settings) -> None:
    """Run the schedule of TASK on this service until *runs* has enough."""
    entry = config.producers.scheduled[TASK]
    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(run_schedule, runs, TASK, entry, ScheduleBoard(config))
            await runs.enough.wait()
            group.cancel_scope.cancel()


async def run_durable(runs: Runs, config: Settings) -> None:
    """Offer the ticks of TASK to a durable queue until *runs* has enough."""
    entry = config.producers.scheduled[TASK]
    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(run_once_per_tick, runs, "q", TASK, entry, ScheduleBoard(config))
            await runs.enough.wait()
            group.cancel_scope.cancel()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
@pytest.mark.parametrize("run", [run_here, run_durable])
async def test_a_forward_step_of_the_wall_clock_does_not_hold_a_cron_run_back(
    monkeypatch: pytest.MonkeyPatch, run: Any
) -> None:
    """A daily run waited for in one sleep of a day's length: after the clock stepped a
    day forwards (a machine resumed), the 03:00 run came 22 hours late, or not at all."""
    clock = FakeClock(monkeypatch, utc(1, 4))
    clock.step_at(utc(1, 5), DAY - 2 * HOUR)  # at 05:00, the clock shows 03:00 the next day
    runs = Runs(clock, wanted=2)
    await run(runs, settings("0 3 * * *"))
    first, second = runs.times
    assert utc(2, 3) <= first <= utc(2, 3) + WALL_CLOCK_CHECK
    assert utc(3, 3) <= second <= utc(3, 3) + WALL_CLOCK_CHECK


@pytest.mark.anyio
@pytest.mark.parametrize("run", [run_here, run_durable])
async def test_a_forward_step_past_many_runs_makes_up_none_but_the_one_awaited(
    monkeypatch: pytest.MonkeyPatch, run: Any
) -> None:
    clock = FakeClock(monkeypatch, utc(1, 9, 59))
    clock.step_at(utc(1, 10, 5), 5 * HOUR)  # 10:05 becomes 15:05: five runs jumped over
    runs = Runs(clock, wanted=3)
    await run(runs, settings("*/15 * * * *"))
    first, late, after = runs.times
    assert first == utc(1, 10)
    # One run, late: here the one awaited (10:15), as after a stall; on a durable queue the
    # tick of 15:00, still offered until the next is due (10:15 was given up at 10:30).
    assert utc(1, 15, 5) <= late <= utc(1, 15, 5) + WALL_CLOCK_CHECK
    assert after == utc(1, 15, 15)


@pytest.mark.anyio
@pytest.mark.parametrize("run", [run_here, run_durable])
async def test_a_backward_step_repeats_no_cron_run(
    monkeypatch: pytest.MonkeyPatch, run: Any
) -> None:
    clock = FakeClock(monkeypatch, utc(1, 9, 59))
    clock.step_at(utc(1, 10, 30), -HOUR)  # 10:30 becomes 09:30
    runs = Runs(clock, wanted=3)
    await run(runs, settings("0 * * * *"))
    # 10:00 is not run again when the clock shows it again; 11:00 runs when it shows 11:00.
    assert runs.times == [utc(1, 10), utc(1, 11), utc(1, 12)]


@pytest.mark.anyio
@pytest.mark.parametrize("by", [DAY, -DAY])
async def test_a_period_run_here_keeps_its_pace_whatever_the_wall_clock_does(
    monkeypatch: pytest.MonkeyPatch, by: float
) -> None:
    start = utc(1, 10)
    clock = FakeClock(monkeypatch, start)
    clock.step_at(start + 90, by)
    runs = Runs(clock, wanted=4)
    await run_here(runs, settings(60))
    assert [at - start for at in runs.times] == [60, 120 + by, 180 + by, 240 + by]


@pytest.mark.anyio
async def test_next_runs_of_a_period_run_here_follow_a_step_of_the_wall_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The next run was noted as a wall-clock time before the sleep: after a step, the
    producers reply showed it off by the step until the run."""
    start = utc(1, 10)
    clock = FakeClock(monkeypatch, start)
    fake_time = types.SimpleNamespace(time=clock.time, monotonic=clock.monotonic)
    monkeypatch.setattr(timetables, "time", fake_time)
    config = settings(60)
    board = ScheduleBoard(config)
    shown: list[str] = []
    clock.step_at(start + 30, DAY, lambda: shown.extend(board.next_runs(TASK, 2)))
    runs = Runs(clock, wanted=1)
    entry = config.producers.scheduled[TASK]
    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(run_schedule, runs, TASK, entry, board)
            await runs.enough.wait()
            group.cancel_scope.cancel()
    assert runs.times == [start + 60 + DAY]
    assert shown == [board.timetable(TASK).show(start + DAY + at) for at in (60, 120)]

"""The timers heap and its runner, and the delayer that holds jobs on a clock."""

from __future__ import annotations

import gc
import logging
import time
import tracemalloc
import weakref

import anyio
import pytest

from dispatcher.server.delayer import Delayer
from dispatcher.server.jobs import Job
from dispatcher.server.timers import Timers
from support.scheduling import FakeTimers, make_job


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def run_until(timers: Timers, done: anyio.Event) -> None:
    """Run *timers* until *done* is set (by one of its calls)."""
    async with anyio.create_task_group() as group:
        group.start_soon(timers.run, name="timers")
        with anyio.fail_after(5):
            await done.wait()
        group.cancel_scope.cancel()


@pytest.mark.anyio
async def test_calls_fire_in_deadline_order() -> None:
    timers, done = Timers(), anyio.Event()
    fired: list[object] = []
    now = time.monotonic()
    for offset, name in [(-1, "second"), (-3, "first"), (-0.5, "third")]:
        timers.call_at(now + offset, fired.append, name)
    timers.call_at(now - 0.1, done.set)
    await run_until(timers, done)
    assert fired == ["first", "second", "third"]


@pytest.mark.anyio
async def test_calls_with_the_same_deadline_fire_in_the_order_they_were_added() -> None:
    timers, done = Timers(), anyio.Event()
    fired: list[object] = []
    deadline = time.monotonic() - 1
    for n in range(5):
        timers.call_at(deadline, fired.append, n)
    timers.call_at(deadline, done.set)
    await run_until(timers, done)
    assert fired == [0, 1, 2, 3, 4]


@pytest.mark.anyio
async def test_a_failing_call_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    timers, done = Timers(), anyio.Event()
    fired: list[object] = []

    def broken() -> None:
        raise RuntimeError("boom")

    deadline = time.monotonic() - 1
    timers.call_at(deadline, fired.append, "before")
    timers.call_at(deadline, broken)
    timers.call_at(deadline, fired.append, "after")
    timers.call_later(0, done.set)
    with caplog.at_level(logging.ERROR, logger="dispatcher.timers"):
        await run_until(timers, done)
    assert fired == ["before", "after"]
    [record] = [r for r in caplog.records if r.name == "dispatcher.timers"]
    assert "timer broken failed" in record.getMessage()
    assert record.exc_info is not None


@pytest.mark.anyio
async def test_a_sooner_call_wakes_a_runner_waiting_for_a_later_one() -> None:
    timers, done = Timers(), anyio.Event()
    timers.call_later(3600, print, "far away")
    async with anyio.create_task_group() as group:
        group.start_soon(timers.run, name="timers")
        await anyio.wait_all_tasks_blocked()  # the runner sleeps towards the far call
        timers.call_later(0, done.set)
        with anyio.fail_after(5):
            await done.wait()
        group.cancel_scope.cancel()


@pytest.mark.anyio
async def test_a_call_added_by_a_call_fires_too() -> None:
    timers, done = Timers(), anyio.Event()
    timers.call_later(0, timers.call_later, 0, done.set)
    await run_until(timers, done)


@pytest.mark.anyio
async def test_a_cancelled_call_is_not_made() -> None:
    timers, done = Timers(), anyio.Event()
    fired: list[object] = []
    deadline = time.monotonic() - 1
    timers.call_at(deadline, fired.append, "kept")
    timers.call_at(deadline, fired.append, "cancelled").cancel()
    timers.call_at(deadline, done.set)
    await run_until(timers, done)
    assert fired == ["kept"]
    assert len(timers) == 0


class Held:
    """Something a call holds (a job, its message), that can be watched going."""


def test_a_cancelled_call_lets_go_of_what_it_holds_at_once() -> None:
    timers = Timers()
    held = Held()
    gone = weakref.ref(held)
    call = timers.call_later(3600, print, held)
    del held
    gc.collect()
    assert gone() is not None
    call.cancel()
    call.cancel()  # twice: nothing more
    gc.collect()
    assert gone() is None
    assert len(timers) == 0


def test_cancelled_calls_do_not_pile_up_until_their_deadline() -> None:
    timers = Timers()
    timers.call_later(7200, print, "the one that stays")
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(100_000):  # quick tasks with a timeout of an hour
            timers.call_later(3600, print, "a task's deadline").cancel()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(timers) == 1
    assert grown < 100_000, f"{grown} bytes kept for 100,000 cancelled calls"


# -- the delayer, on a manual clock --------------------------------------------------------


def delayer() -> tuple[FakeTimers, Delayer, list[Job]]:
    timers, due = FakeTimers(), list[Job]()
    return timers, Delayer(timers, due.append), due


def test_held_jobs_come_out_when_due_in_deadline_order() -> None:
    timers, held, due = delayer()
    slow, fast, same = make_job(), make_job(), make_job()
    held.hold(slow, 5)
    held.hold(fast, 1)
    held.hold(same, 5)
    assert held.count == 3
    assert held.held() == [slow, fast, same]  # oldest first
    timers.advance(1)
    assert due == [fast]
    timers.advance(4)
    assert due == [fast, slow, same]
    assert held.count == 0


def test_removed_jobs_never_come_out() -> None:
    timers, held, due = delayer()
    kept, removed = make_job("app.keep"), make_job("app.drop")
    held.hold(kept, 1)
    held.hold(removed, 1)

    def match(job: Job) -> bool:
        return job.task == "app.drop"

    assert held.remove(match) == [removed]
    assert held.remove(match) == []
    assert timers.pending() == 1  # the removed job's timer is cancelled with it
    timers.advance(2)
    assert due == [kept]

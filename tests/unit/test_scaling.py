"""Scaling decisions: how many workers to start, which to stop, when to retire one."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import pytest

from dispatcher.config import Pool
from dispatcher.server.handle_status import WorkerStatus
from dispatcher.server.scaling import Plan, past_lifetime, plan, retire_reason

READY, BUSY, STARTING = WorkerStatus.READY, WorkerStatus.BUSY, WorkerStatus.STARTING
STOPPING, EXITED = WorkerStatus.STOPPING, WorkerStatus.EXITED


@dataclass
class State:
    """A worker as the decisions see it."""

    id: int
    status: WorkerStatus
    created: float = 0.0
    idle_since: float = 0.0
    tasks_done: int = 0


def pool(
    *states: WorkerStatus, idle_since: tuple[float, ...] = (), created: float = 0.0
) -> list[State]:
    """Workers 0, 1, ... in these states (idle since the given times, else 0)."""
    times = list(idle_since) + [0.0] * (len(states) - len(idle_since))
    return [State(n, status, created, times[n]) for n, status in enumerate(states)]


SETTINGS = Pool(min_workers=1, max_workers=4, scaledown_wait=10, max_worker_lifetime=None)


def settings(**changes: Any) -> Pool:
    return dataclasses.replace(SETTINGS, **changes)


# -- min_workers and backlog --------------------------------------------------------------


def test_an_empty_pool_starts_min_workers() -> None:
    assert plan(0, [], 0, settings(min_workers=3), 4) == Plan(start=3)


def test_starting_workers_count_towards_min_workers() -> None:
    assert plan(0, pool(STARTING, READY), 0, settings(min_workers=3), 4) == Plan(start=1)


def test_stopping_and_exited_workers_do_not_count() -> None:
    assert plan(0, pool(STOPPING, EXITED, READY), 0, settings(min_workers=2), 4) == Plan(start=1)


def test_min_workers_kept_even_with_a_backlog_in_one_step() -> None:
    assert plan(0, [], 50, settings(min_workers=2), 4) == Plan(start=2)


def test_a_backlog_adds_one_worker_per_step() -> None:
    assert plan(0, pool(BUSY), 5, SETTINGS, 4) == Plan(start=1)
    assert plan(0, pool(BUSY, BUSY), 5, SETTINGS, 4) == Plan(start=1)


def test_no_worker_is_added_while_one_is_starting() -> None:
    assert plan(0, pool(BUSY, STARTING), 5, SETTINGS, 4) == Plan()


def test_max_workers_is_never_passed() -> None:
    assert plan(0, pool(BUSY, BUSY), 5, SETTINGS, 2) == Plan()
    # a stopping worker makes room for a new one
    assert plan(0, pool(BUSY, STOPPING), 5, SETTINGS, 2) == Plan(start=1)


def test_no_backlog_no_new_worker() -> None:
    assert plan(0, pool(BUSY), 0, SETTINGS, 4) == Plan()


# -- scaling down ----------------------------------------------------------------------


def test_the_longest_idle_worker_stops_after_scaledown_wait_only() -> None:
    workers = pool(READY, READY, READY, idle_since=(5.0, 2.0, 8.0))
    assert plan(11.9, workers, 0, SETTINGS, 4) == Plan()
    assert plan(12.0, workers, 0, SETTINGS, 4) == Plan(stop=[1])


def test_one_worker_stops_per_step() -> None:
    workers = pool(READY, READY, READY)
    assert plan(100, workers, 0, SETTINGS, 4) == Plan(stop=[0])


def test_scaling_down_keeps_min_workers() -> None:
    assert plan(100, pool(READY, READY), 0, settings(min_workers=2), 4) == Plan()


def test_busy_and_starting_workers_are_not_scaled_down() -> None:
    assert plan(100, pool(BUSY, BUSY, STARTING), 0, SETTINGS, 4) == Plan()


def test_no_scaling_down_while_jobs_wait() -> None:
    assert plan(100, pool(READY, BUSY, BUSY, BUSY), 3, SETTINGS, 4) == Plan()


# -- lifetime --------------------------------------------------------------------------


def test_an_idle_worker_past_its_lifetime_is_retired_and_replaced() -> None:
    lifetime = settings(max_worker_lifetime=100)
    workers = pool(READY, READY, idle_since=(99.0, 99.0))
    workers[1].created = 50.0
    assert plan(99.9, workers, 0, lifetime, 4) == Plan()
    assert plan(100, workers, 0, lifetime, 4) == Plan(stop=[0])
    workers = pool(READY)
    assert plan(100, workers, 0, lifetime, 4) == Plan(start=1, stop=[0])


def test_busy_and_starting_workers_past_their_lifetime_are_left_alone() -> None:
    lifetime = settings(max_worker_lifetime=100)
    assert plan(500, pool(BUSY, STARTING), 0, lifetime, 4) == Plan()


def test_without_a_lifetime_workers_live_on() -> None:
    assert plan(1e9, pool(READY, idle_since=(1e9,)), 0, SETTINGS, 4) == Plan()


def test_retirement_goes_with_a_scale_down_of_another_worker() -> None:
    lifetime = settings(max_worker_lifetime=100)
    workers = pool(READY, READY, READY, idle_since=(150.0, 10.0, 150.0))
    workers[1].created = workers[2].created = 90.0
    # worker 0 is past its lifetime; worker 1 has idled long enough to go too
    assert plan(150, workers, 0, lifetime, 4) == Plan(stop=[0, 1])


def test_past_lifetime() -> None:
    worker = State(0, BUSY, created=10.0)
    assert not past_lifetime(worker, 109.9, settings(max_worker_lifetime=100))
    assert past_lifetime(worker, 110, settings(max_worker_lifetime=100))
    assert not past_lifetime(worker, 1e9, SETTINGS)


@pytest.mark.parametrize(
    ("tasks_done", "now", "reason"),
    [
        (2, 50, None),
        (3, 50, "ran 3 tasks"),
        (2, 100, "reached its maximum lifetime"),
        (5, 100, "ran 5 tasks"),
    ],
)
def test_retire_reason(tasks_done: int, now: float, reason: str | None) -> None:
    worker = State(0, READY, tasks_done=tasks_done)
    recycling = settings(max_tasks_per_worker=3, max_worker_lifetime=100)
    assert retire_reason(worker, now, recycling) == reason


def test_no_retire_reason_without_limits() -> None:
    assert retire_reason(State(0, READY, tasks_done=10**6), 1e9, SETTINGS) is None

"""The task catalogue's "did you mean": bounded in cost, remembered, forgotten on reload."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterable
from typing import Any

import pytest

from dispatcher.publish.mistakes import close_task_name
from dispatcher.server import catalogue as catalogue_module
from dispatcher.server.catalogue import SUGGESTION_SECONDS, TaskCatalogue


def test_looking_up_close_names_costs_a_bounded_time_a_second_and_is_remembered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [0.0]
    catalogue = TaskCatalogue(clock=lambda: now[0], cpu_clock=lambda: now[0])
    catalogue.learn(frozenset(f"app.tasks.t{n}" for n in range(3000)))
    looked_up: list[str] = []
    original = catalogue_module.close_task_name

    def costly(name: str, names: Iterable[str], *rest: Any) -> str | None:
        looked_up.append(name)
        found = original(name, names, *rest)
        now[0] += 0.011  # each look-up takes 11 ms of the clock
        return found

    monkeypatch.setattr(catalogue_module, "close_task_name", costly)
    answers = [catalogue.close_name(f"app.tasks.tx{n}") for n in range(100)]
    allowed = int(SUGGESTION_SECONDS // 0.011) + 1  # (the last one goes past the budget)
    assert len(looked_up) == allowed
    assert answers == [f"app.tasks.t{n}" for n in range(allowed)] + [None] * (100 - allowed)
    # Remembered: no look-up, even with the budget spent.
    assert catalogue.close_name("app.tasks.tx0") == "app.tasks.t0"
    assert len(looked_up) == allowed
    now[0] += 1.0  # the next second
    assert catalogue.close_name("app.tasks.tx50") == "app.tasks.t50"
    # New code: what was remembered of the old names goes.
    catalogue.refresh(frozenset({"app.tasks.other"}))
    now[0] += 1.0
    assert catalogue.close_name("app.tasks.tx0") is None
    assert looked_up[-1] == "app.tasks.tx0"


def long_names(count: int) -> frozenset[str]:
    """*count* registered names of 252 characters, alike: the costliest to compare."""
    chance = random.Random(1)
    return frozenset(
        "myapp.tasks." + "".join(chance.choice("ab") for _ in range(240)) for _ in range(count)
    )


def test_one_look_up_stops_when_the_budget_is_spent() -> None:
    # Compared with a crafted unknown name, 5,000 long names took up to 1.4 s.
    catalogue = TaskCatalogue()
    catalogue.learn(long_names(4999))
    for unknown in ("x" * 255, "myapp.tasks." + "ab" * 120, "myapp.tasks." + "a" * 243):
        began = time.thread_time()
        assert catalogue.close_name(unknown) is None
        assert time.thread_time() - began < SUGGESTION_SECONDS + 0.2
        catalogue._window = -1e9  # the next second: a whole budget again


def test_a_look_up_stopped_is_not_remembered() -> None:
    step = [0.001]
    now = [0.0]

    def clock() -> float:
        now[0] += step[0]  # each comparison reads the clock: 1 ms each
        return now[0]

    catalogue = TaskCatalogue(clock=clock, cpu_clock=clock)
    names = frozenset(f"app.tasks.t{n:03}" for n in range(200))
    catalogue.learn(names)
    assert catalogue.close_name("app.tasks.t199x") is None  # stopped after ~50 comparisons
    assert now[0] < SUGGESTION_SECONDS + 0.005
    assert catalogue.close_name("app.tasks.t198x") is None  # the budget is spent
    step[0] = 0.0
    now[0] += 1.0  # the next second, comparisons cheap
    assert catalogue.close_name("app.tasks.t199x") == "app.tasks.t199"


def test_the_time_a_look_up_waits_for_the_cpu_is_not_spent_on_it() -> None:
    """On a loaded machine, a look-up among 3,000 names (some 12 ms of work) took more than
    the whole budget of the wall clock: no unknown name got a suggestion, not even the first."""
    wall = [0.0]
    cpu = [0.0]

    def cpu_clock() -> float:  # read before each comparison
        wall[0] += 0.001  # the thread held up: 1 ms between two comparisons
        cpu[0] += 0.000_004  # of which 4 µs comparing
        return cpu[0]

    catalogue = TaskCatalogue(clock=lambda: wall[0], cpu_clock=cpu_clock)
    catalogue.learn(frozenset(f"app.tasks.t{n}" for n in range(3000)))
    assert catalogue.close_name("app.tasks.tx0") == "app.tasks.t0"
    assert wall[0] > 1.0  # held up for seconds
    assert cpu[0] < SUGGESTION_SECONDS  # for a few milliseconds of work


def test_close_task_name_gives_up_at_its_deadline() -> None:
    names = [f"app.tasks.t{n}" for n in range(10)]
    assert close_task_name("app.tasks.t1x", names, deadline=math.inf) == "app.tasks.t1"
    with pytest.raises(TimeoutError):
        close_task_name("app.tasks.t1x", names, deadline=time.perf_counter())
    calls = [0]

    def clock() -> float:
        calls[0] += 1
        return float(calls[0])

    with pytest.raises(TimeoutError):
        close_task_name("app.tasks.t9x", names, deadline=3.5, clock=clock)
    assert calls[0] == 4  # one reading before each comparison, until past the deadline

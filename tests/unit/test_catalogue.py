"""The task catalogue's "did you mean": bounded in cost, remembered, forgotten on reload."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from dispatcher.server import catalogue as catalogue_module
from dispatcher.server.catalogue import SUGGESTION_SECONDS, TaskCatalogue


def test_looking_up_close_names_costs_a_bounded_time_a_second_and_is_remembered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [0.0]
    catalogue = TaskCatalogue(clock=lambda: now[0])
    catalogue.learn(frozenset(f"app.tasks.t{n}" for n in range(3000)))
    looked_up: list[str] = []
    original = catalogue_module.close_task_name

    def costly(name: str, names: Iterable[str]) -> str | None:
        looked_up.append(name)
        now[0] += 0.011  # each look-up takes 11 ms of the clock
        return original(name, names)

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

"""The task counters exported at 0 before anything happened: which, for how many tasks, at what cost."""

from __future__ import annotations

from collections import Counter
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from dispatcher.server import metrics
from dispatcher.server.metrics import render
from dispatcher.server.stats import QueueSampling, ServiceStats

FAILURES = {"error", "timeout", "killed", "worker_lost", "memory_exceeded"}
"""The outcomes docs/control.md says are exported at 0."""

MAX_ZERO_SERIES_TASKS = 1_000
"""The registered tasks beyond which docs/control.md says none is exported at 0."""


class Source:
    """What the metrics endpoint reads: *count* registered tasks, nothing else going on."""

    def __init__(self, count: int) -> None:
        self.stats = ServiceStats()
        self.names = frozenset(f"myapp.module{i // 50}.tasks.task_number_{i}" for i in range(count))

    def worker_statuses(self) -> dict[str, int]:
        return {}

    def counts(self) -> dict[str, Any]:
        return {"queued": 0, "blocked": 0, "delayed": 0}

    def queue_sampling(self) -> QueueSampling | None:
        return None

    def registered_tasks(self) -> frozenset[str]:
        return self.names


def finished(text: str) -> Counter[tuple[str, str]]:
    """The ``dispatcher_tasks_finished_total`` samples of *text*, by (task, outcome)."""
    found: Counter[tuple[str, str]] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "dispatcher_tasks_finished_total":
                key = (sample.labels["task"], sample.labels["outcome"])
                assert key not in found, key  # each series once
                found[key] = int(sample.value)
    return found


def test_each_registered_task_has_its_failure_outcomes_at_zero() -> None:
    source = Source(3)
    found = finished("".join(render(source)))
    assert found == {(task, outcome): 0 for task in source.names for outcome in FAILURES}
    assert set(found.values()) == {0}


def test_a_series_that_happened_is_shown_once_with_its_count() -> None:
    source = Source(2)
    task = sorted(source.names)[0]
    zeros = metrics.ZeroSeries()
    render_once = "".join(render(source, zeros))
    assert finished(render_once)[task, "error"] == 0
    source.stats.finished_by_task[task, "error"] += 2
    source.stats.finished_by_task[task, "ok"] += 1
    found = finished("".join(render(source, zeros)))
    assert found[task, "error"] == 2
    assert found[task, "ok"] == 1
    assert len(found) == 2 * len(FAILURES) + 1


def test_beyond_the_cap_no_task_has_series_at_zero_and_a_scrape_stays_small() -> None:
    source = Source(MAX_ZERO_SERIES_TASKS + 1)
    text = "".join(render(source))
    assert finished(text) == {}
    many = Source(16_000)
    assert len("".join(render(many)).encode()) < 20_000
    at_cap = Source(MAX_ZERO_SERIES_TASKS)
    assert len(finished("".join(render(at_cap)))) == MAX_ZERO_SERIES_TASKS * len(FAILURES)


def test_the_lines_at_zero_are_made_once_for_the_registered_names() -> None:
    source = Source(MAX_ZERO_SERIES_TASKS)
    assert metrics.MAX_ZERO_SERIES_TASKS == MAX_ZERO_SERIES_TASKS
    zeros = metrics.ZeroSeries()
    first = zeros.lines(source.names, source.stats.finished_by_task)
    assert zeros.lines(source.names, source.stats.finished_by_task) is first
    task = sorted(source.names)[0]
    source.stats.finished_by_task[task, "timeout"] += 1
    again = zeros.lines(source.names, source.stats.finished_by_task)
    assert again.count("\n") == first.count("\n") - 1
    reloaded = frozenset(sorted(source.names)[:10])
    assert (
        zeros.lines(reloaded, source.stats.finished_by_task).count("\n") == 10 * len(FAILURES) - 1
    )

"""When a task's start is seen (``service.task_log: start_and_end``), and what is logged."""

from __future__ import annotations

import logging

import pytest

from dispatcher.config.settings import TaskLog
from dispatcher.schema import Outcome
from dispatcher.server.accounting import Accounting
from dispatcher.server.jobs import Job
from dispatcher.server.stats import ServiceStats
from dispatcher.server.workers import WorkerHandle
from support.scheduling import FakeProcess, FakeTimers, make_job


def test_a_job_held_ahead_starts_when_the_one_before_it_ends() -> None:
    timers = FakeTimers()
    starts: list[tuple[str, int]] = []
    handle = WorkerHandle(
        3, timers, 2.0, clock=timers.clock, on_start=lambda job, n: starts.append((job.uuid, n))
    )
    handle.attach(FakeProcess())
    assert handle.ready()
    first, held, cancelled = make_job(uuid="a"), make_job(uuid="b"), make_job(uuid="c")
    handle.run(first)
    assert starts == [("a", 3)]
    handle.hold_ahead([held])
    assert starts == [("a", 3)]  # sent ahead: not started yet
    handle.finish("ok")
    assert starts == [("a", 3), ("b", 3)]
    handle.hold_ahead([cancelled])
    assert handle.cancel_ahead(cancelled)
    handle.finish("ok")
    assert starts == [("a", 3), ("b", 3)]  # cancelled while held: it never starts


def job(uuid: str) -> Job:
    return make_job("app.tasks.work", uuid=uuid)


@pytest.mark.parametrize(
    ("task_log", "starts", "finished_level"),
    [
        ("end", False, logging.INFO),
        ("start_and_end", True, logging.INFO),
        ("off", False, logging.DEBUG),
    ],
)
def test_task_log_sets_the_lines(
    task_log: TaskLog, starts: bool, finished_level: int, caplog: pytest.LogCaptureFixture
) -> None:
    accounting = Accounting(ServiceStats(), task_log=task_log)
    assert accounting.logs_starts is starts
    caplog.set_level(logging.DEBUG, logger="dispatcher")
    accounting.finished(job("u1"), Outcome.OK, 2, 10.0, 10.25)
    [record] = [r for r in caplog.records if r.name == "dispatcher.tasks"]
    assert record.levelno == finished_level
    assert record.getMessage() == (
        "task app.tasks.work (uuid u1) finished ok in 250.0 ms on worker 2"
    )


def test_a_failure_is_logged_at_error_even_when_task_lines_are_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="dispatcher")
    accounting = Accounting(ServiceStats(), task_log="off")
    accounting.finished(job("u2"), Outcome.ERROR, 0, 1.0, 2.0, "ValueError: no", "Traceback")
    [record] = [r for r in caplog.records if r.name == "dispatcher.tasks"]
    assert record.levelno == logging.ERROR
    assert record.getMessage().startswith("task app.tasks.work (uuid u2) failed: ValueError: no")

"""When a task's start is seen (``service.task_log: start_and_end``), and what is logged."""

from __future__ import annotations

import logging

import pytest

from dispatcher.config.service_settings import TaskLog
from dispatcher.schema import Outcome
from dispatcher.server.accounting import Accounting
from dispatcher.server.jobs import Job
from dispatcher.server.scheduler import stamped
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


def starting_handle(timers: FakeTimers, starts: list[str]) -> WorkerHandle:
    handle = WorkerHandle(
        3, timers, 2.0, clock=timers.clock, on_start=lambda job, n: starts.append(job.uuid)
    )
    handle.attach(FakeProcess())
    assert handle.ready()
    handle.run(make_job(uuid="first"))
    return handle


def test_a_held_job_near_its_start_by_is_told_started_only_once_it_has_run() -> None:
    timers, starts = FakeTimers(), []
    handle = starting_handle(timers, starts)
    late, near, far = (make_job(uuid=name) for name in ("late", "near", "far"))
    handle.hold_ahead([stamped(late, 5.0), stamped(near, 5.5), stamped(far, 100.0)])
    timers.advance(5.0)
    handle.finish("ok")
    assert starts == ["first"]  # "late" may have been found past its start_by
    assert handle.finish("expired") == (None, Outcome.CANCELLED)
    assert starts == ["first"]  # it never ran: no start line; "near" too may come back
    assert handle.finish("ok")[0] is not None  # "near" ran after all: told at its end
    assert starts == ["first", "near", "far"]  # "far" is surely not past its start_by
    assert [job.uuid for job in handle.take_unstarted()] == ["late"]


def test_a_job_sent_to_an_idle_worker_near_its_start_by_is_told_started_once_it_ran() -> None:
    timers, starts = FakeTimers(), []
    handle = WorkerHandle(
        3, timers, 2.0, clock=timers.clock, on_start=lambda job, n: starts.append(job.uuid)
    )
    handle.attach(FakeProcess())
    assert handle.ready()
    handle.run(stamped(make_job(uuid="late"), 0.5))
    assert starts == []
    handle.finish("expired")
    assert starts == []
    handle.run(stamped(make_job(uuid="near"), 0.5))
    handle.finish("ok")
    assert starts == ["near"]
    handle.run(stamped(make_job(uuid="far"), 60.0))
    assert starts == ["near", "far"]


def test_a_recalled_worker_tells_a_start_only_once_the_job_has_run() -> None:
    timers, starts = FakeTimers(), []
    handle = starting_handle(timers, starts)
    ran, given_back = make_job(uuid="ran"), make_job(uuid="given-back")
    handle.hold_ahead([ran, given_back])
    assert handle.recall_ahead()
    handle.finish("ok")
    handle.finish("ok")  # the worker had started it when the recall came
    assert starts == ["first", "ran"]
    handle.finish("recalled")
    assert starts == ["first", "ran"]
    assert handle.take_unstarted() == [given_back]


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

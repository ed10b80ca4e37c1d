"""Every task run that started is timed (queue wait, run time), however it ended."""

from __future__ import annotations

from dispatcher.schema import Outcome
from dispatcher.server.accounting import Accounting
from dispatcher.server.jobs import Job
from dispatcher.server.stats import ServiceStats

TASK = "app.tasks.charge"


def job(uuid: str) -> Job:
    return Job(uuid=uuid, task=TASK, line=b"{}", published=100.0)


def test_runs_that_started_are_timed_whatever_their_end_and_unstarted_ones_are_not() -> None:
    stats = ServiceStats()
    accounting = Accounting(stats)
    accounting.finished(job("u-ok"), Outcome.OK, 1, 101.0, 102.0)
    accounting.lost(job("u-lost"), Outcome.WORKER_LOST, 1, 99, 101.0, 104.0)
    accounting.lost(job("u-killed"), Outcome.KILLED, 1, 99, 101.0, 108.0)
    accounting.abandoned(job("u-abandoned"), 5.0, 1, 103.0, 110.0)
    accounting.finished(job("u-held"), Outcome.CANCELLED, 1, None, 111.0)  # never started
    started = sum(n for (task, outcome), n in stats.finished_by_task.items() if task == TASK) - 1
    assert stats.run_time[TASK].count == stats.queue_wait[TASK].count == started == 4
    assert stats.run_time[TASK].total == 1.0 + 3.0 + 7.0 + 7.0
    assert stats.queue_wait[TASK].total == 1.0 + 1.0 + 1.0 + 3.0

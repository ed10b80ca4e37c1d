"""The service remembers its last failed task runs, for ``status`` (``recent_failures``)."""

from __future__ import annotations

from dispatcher.schema import Outcome
from dispatcher.server.accounting import Accounting
from dispatcher.server.jobs import Job
from dispatcher.server.stats import MAX_FAILURE_ERROR_CHARS, RECENT_FAILURES, ServiceStats


def job(uuid: str) -> Job:
    return Job(uuid=uuid, task="app.tasks.charge", line=b"{}")


def test_only_the_last_failures_are_kept_and_cancels_and_successes_are_not_failures() -> None:
    stats = ServiceStats()
    accounting = Accounting(stats)
    for n in range(RECENT_FAILURES + 5):
        accounting.finished(job(f"u-{n}"), Outcome.ERROR, 0, 1.0, 2.0, error=f"E{n}: no\nmore")
    accounting.finished(job("u-ok"), Outcome.OK, 0, 1.0, 2.0)
    accounting.finished(job("u-cancelled"), Outcome.CANCELLED, 0, 1.0, 2.0)
    kept = list(stats.recent_failures)
    assert [f.uuid for f in kept] == [f"u-{n}" for n in range(5, RECENT_FAILURES + 5)]
    assert kept[-1].error == f"E{RECENT_FAILURES + 4}: no"
    assert kept[-1].as_reply().keys() == {"task", "uuid", "outcome", "error", "time"}


def test_runs_ended_with_their_worker_or_by_timeout_are_failures_with_a_reason() -> None:
    stats = ServiceStats()
    accounting = Accounting(stats)
    accounting.lost(job("u-lost"), Outcome.WORKER_LOST, 3, 1234, 1.0, 2.0)
    accounting.finished(job("u-slow"), Outcome.TIMEOUT, 0, 1.0, 2.0)
    accounting.finished(job("u-long"), Outcome.ERROR, 0, 1.0, 2.0, error="x" * 1000)
    lost, slow, long = stats.recent_failures
    assert (lost.outcome, lost.error) == (
        "worker_lost",
        "worker_lost: worker 3 (pid 1234) ended with it",
    )
    assert (slow.outcome, slow.error) == ("timeout", "timeout")
    assert len(long.error) == MAX_FAILURE_ERROR_CHARS
    assert long.error.endswith("...")

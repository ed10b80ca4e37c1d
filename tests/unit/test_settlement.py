"""Durable brokers hear how every job they delivered ended, exactly once, in batches."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from dispatcher.config import Limits
from dispatcher.schema import Outcome
from dispatcher.server.brokers import BrokerBase, Settled
from dispatcher.server.jobs import Job
from dispatcher.server.origin import Origin
from dispatcher.server.scheduler import Scheduler
from dispatcher.server.settlement import Settlements
from dispatcher.server.stats import ServiceStats
from support.scheduling import FakeRunner, FakeTimers, make_job

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Spool(BrokerBase):
    """A broker that records the batches it is told about."""

    def __init__(self, name: str = "spool", fail: bool = False) -> None:
        super().__init__(name)
        self.batches: list[list[Settled]] = []
        self.fail = fail

    async def acknowledge(self, settled: Sequence[Settled]) -> None:
        if self.fail:
            raise OSError("the spool is gone")
        self.batches.append(list(settled))


class Fleeting(BrokerBase):
    """A broker that delivers at most once: it has no acknowledge()."""


def delivered(job: Job, receipt: str | None, broker: str = "spool") -> Job:
    return job._replace(broker=broker, receipt=receipt)


async def test_settlements_are_handed_over_in_one_batch_per_broker() -> None:
    spool = Spool()
    settlements = Settlements([spool, Fleeting("pg_notify")])
    settlements.job(delivered(make_job(), "r1"), Outcome.OK)
    settlements.job(delivered(make_job(), "r2"), Outcome.ERROR, "ValueError: no")
    settlements.origin(Origin("spool", receipt="r3"), "rejected", "not JSON")
    settlements.job(delivered(make_job(), None), Outcome.OK)  # no receipt: nothing to say
    settlements.job(delivered(make_job(), "r4", broker="pg_notify"), Outcome.OK)
    settlements.origin(Origin("spool"), "rejected")
    await settlements.flush()
    assert spool.batches == [
        [
            Settled("r1", "ok"),
            Settled("r2", "error", "ValueError: no"),
            Settled("r3", "rejected", "not JSON"),
        ]
    ]
    await settlements.flush()
    assert len(spool.batches) == 1  # each settlement is handed over once


async def test_a_failing_acknowledgement_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settlements = Settlements([Spool(fail=True)])
    settlements.job(delivered(make_job(), "r1"), Outcome.OK)
    await settlements.flush()
    assert "could not record 1 outcomes: OSError: the spool is gone" in caplog.text


def test_jobs_that_never_run_are_settled_with_the_reason() -> None:
    settled: list[tuple[str | None, str]] = []
    timers, stats = FakeTimers(), ServiceStats()
    workers: list[FakeRunner] = []
    scheduler = Scheduler(
        Limits(max_queued=1),
        timers,
        stats,
        lambda: workers,
        settle=lambda job, outcome: settled.append((job.receipt, outcome)),
    )
    busy = FakeRunner(1)
    workers.append(busy)
    scheduler.worker_free(busy)
    scheduler.submit(delivered(make_job("app.same", on_duplicate="discard"), "running"))
    scheduler.submit(delivered(make_job("app.same", on_duplicate="discard"), "duplicate"))
    scheduler.submit(delivered(make_job(), "queued"))
    scheduler.submit(delivered(make_job(), "over-the-limit"))
    scheduler.submit(delivered(make_job(uuid="late", delay=60), "delayed"))
    scheduler.cancel(uuid="late")
    scheduler.submit(delivered(make_job(delay=60), "left-behind"))
    scheduler.close()
    assert settled == [
        ("duplicate", "discarded"),
        ("over-the-limit", "refused"),
        ("delayed", "cancelled"),
        ("queued", "abandoned"),
        ("left-behind", "abandoned"),
    ]

"""The scheduler: delay, duplicate gate, fair queue (lanes), matching, limits, running, cancel, close.

Workers are :class:`FakeRunner` objects (or real worker handles on fake processes where the
signal a cancel sends matters); time is a manual clock.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from dispatcher.config import Limits
from dispatcher.schema import Outcome
from dispatcher.server.jobs import Job
from dispatcher.server.protocol import (
    CANCEL_SIGNALS,
    PIPELINE_DEPTH,
    REFILL_BELOW,
    read_line,
    with_start_by,
)
from dispatcher.server.runners import Runner
from dispatcher.server.scheduler import Scheduler
from dispatcher.server.settlement import ABANDONED
from dispatcher.server.stats import ServiceStats
from dispatcher.server.workers import WorkerHandle
from support.examples import examples
from support.scheduling import FakeProcess, FakeRunner, FakeTimers, make_job


@dataclass
class Rig:
    """A scheduler with its clock, counters and workers."""

    limits: Limits = field(default_factory=Limits)
    timers: FakeTimers = field(default_factory=FakeTimers)
    stats: ServiceStats = field(default_factory=ServiceStats)
    workers: list[Runner] = field(default_factory=list)
    backlogs: int = 0
    settled: list[tuple[Job, str]] = field(default_factory=list)
    """Jobs the scheduler settled itself (refused, discarded, abandoned...), with how."""

    def __post_init__(self) -> None:
        self.scheduler = Scheduler(
            self.limits,
            self.timers,
            self.stats,
            lambda: self.workers,
            self._backlog,
            lambda job, outcome: self.settled.append((job, outcome)),
        )

    def _backlog(self) -> None:
        self.backlogs += 1

    def runner(self) -> FakeRunner:
        """A new worker, ready: the scheduler gives it a queued job or keeps it idle."""
        worker = FakeRunner(len(self.workers) + 1)
        self.workers.append(worker)
        self.scheduler.worker_free(worker)
        return worker

    def finish(self, worker: FakeRunner) -> Job:
        """*worker*'s job ends and the worker is ready again (as the pool reports it)."""
        job = worker.done()
        self.scheduler.job_ended(job)
        self.scheduler.worker_free(worker)
        return job


def message_of(job: Job) -> dict[str, Any]:
    """The message of *job* as control replies show it."""
    return {"uuid": job.uuid, "task": job.task, "args": [], "kwargs": {}} | (
        {"on_duplicate": job.on_duplicate} if job.on_duplicate else {}
    )


def uuids(found: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(entry["where"], entry["uuid"]) for entry in found]


# -- matching and order ----------------------------------------------------------------


def test_queued_jobs_run_in_arrival_order() -> None:
    rig = Rig()
    worker = rig.runner()
    jobs = [make_job() for _ in range(4)]
    for job in jobs:
        assert rig.scheduler.submit(job)
    assert worker.ran == jobs[:1]
    assert rig.scheduler.queued == 3
    for _ in range(3):
        rig.finish(worker)
    assert worker.ran == jobs
    assert rig.scheduler.queued == 0


def test_the_longest_idle_worker_gets_the_next_job() -> None:
    rig = Rig()
    first, second = rig.runner(), rig.runner()
    a, b, c = make_job(), make_job(), make_job()
    rig.scheduler.submit(a)
    assert first.ran == [a]
    rig.finish(first)  # now the newest idle worker
    rig.scheduler.submit(b)
    rig.scheduler.submit(c)
    assert second.ran == [b]
    assert first.ran == [a, c]


def test_an_idle_worker_no_longer_ready_is_skipped() -> None:
    rig = Rig()
    stale, ready = rig.runner(), rig.runner()
    stale.available = False
    job = make_job()
    rig.scheduler.submit(job)
    assert stale.ran == []
    assert ready.ran == [job]


def test_a_forgotten_worker_gets_no_job() -> None:
    rig = Rig()
    worker = rig.runner()
    rig.scheduler.forget(worker)
    rig.scheduler.forget(worker)  # forgetting twice is harmless
    rig.scheduler.submit(make_job())
    assert worker.ran == []
    assert rig.scheduler.queued == 1


def test_backlog_callback_runs_once_each_time_a_backlog_starts() -> None:
    rig = Rig()
    for _ in range(3):
        rig.scheduler.submit(make_job())
    assert rig.backlogs == 1
    worker = rig.runner()  # takes the first queued job
    rig.finish(worker)
    rig.finish(worker)
    rig.finish(worker)
    assert rig.scheduler.queued == 0
    rig.scheduler.submit(make_job())  # runs on the idle worker: no backlog
    assert rig.backlogs == 1
    rig.scheduler.submit(make_job())
    assert rig.backlogs == 2


def test_a_worker_freed_with_nothing_queued_waits_for_the_next_job() -> None:
    rig = Rig()
    worker = rig.runner()
    assert worker.ran == []
    job = make_job()
    rig.scheduler.submit(job)
    assert worker.ran == [job]


# -- delays ----------------------------------------------------------------------------


def test_a_delayed_job_is_held_until_its_delay_has_passed() -> None:
    rig = Rig()
    worker = rig.runner()
    job = make_job(delay=5)
    assert rig.scheduler.submit(job)
    assert rig.scheduler.delayed == 1
    assert rig.scheduler.held_bytes == len(job.line)
    rig.timers.advance(4.75)
    assert worker.ran == []
    rig.timers.advance(0.25)
    assert worker.ran == [job]
    assert rig.scheduler.delayed == 0
    assert rig.scheduler.held_bytes == 0


def test_delayed_jobs_are_admitted_in_the_order_they_fall_due() -> None:
    rig = Rig()
    later, sooner = make_job(delay=3), make_job(delay=1)
    rig.scheduler.submit(later)
    rig.scheduler.submit(sooner)
    rig.timers.advance(5)
    assert rig.scheduler.running() == [
        {
            "where": "queued",
            "uuid": sooner.uuid,
            "task": sooner.task,
            "message": message_of(sooner),
        },
        {"where": "queued", "uuid": later.uuid, "task": later.task, "message": message_of(later)},
    ]


def test_a_job_cancelled_while_delayed_never_runs() -> None:
    rig = Rig()
    worker = rig.runner()
    job = make_job(delay=5)
    rig.scheduler.submit(job)
    assert uuids(rig.scheduler.cancel(uuid=job.uuid)) == [("delayed", job.uuid)]
    assert rig.stats.finished["cancelled"] == 1
    assert rig.scheduler.held_bytes == 0
    rig.timers.advance(10)
    assert worker.ran == []
    assert rig.scheduler.running() == []


def test_a_delayed_duplicate_meets_the_gate_when_due() -> None:
    rig = Rig()
    worker = rig.runner()
    running = make_job("app.sync", on_duplicate="discard")
    rig.scheduler.submit(running)
    rig.scheduler.submit(make_job("app.sync", on_duplicate="discard", delay=2))
    rig.timers.advance(2)
    assert rig.stats.discarded == 1
    rig.finish(worker)
    rig.scheduler.submit(make_job("app.sync", on_duplicate="discard", delay=2))
    rig.timers.advance(2)
    assert len(worker.ran) == 2


# -- limits ----------------------------------------------------------------------------


def test_max_held_bytes_refuses_a_job_that_would_pass_it() -> None:
    kept = [make_job(), make_job(delay=1)]
    refused = make_job()
    size = sum(len(job.line) for job in kept)  # (a job's line grows with the jobs made before)
    rig = Rig(Limits(max_held_bytes=size))
    assert all(rig.scheduler.submit(job) for job in kept)
    assert not rig.scheduler.submit(refused)
    assert rig.stats.rejected["overloaded"] == 1
    assert rig.scheduler.held_bytes == size
    rig.timers.advance(1)
    worker = rig.runner()
    rig.finish(worker)
    rig.finish(worker)
    assert worker.ran == kept


def test_max_delayed_refuses_the_newest_delayed_job() -> None:
    rig = Rig(Limits(max_delayed=1))
    worker = rig.runner()
    kept, refused = make_job(delay=1), make_job(delay=1)
    assert rig.scheduler.submit(kept)
    assert not rig.scheduler.submit(refused)
    assert rig.stats.rejected["overloaded"] == 1
    assert rig.scheduler.delayed == 1
    rig.timers.advance(1)
    assert worker.ran == [kept]
    assert rig.scheduler.submit(make_job(delay=1))  # room again


def test_max_queued_refuses_the_newest_job_when_no_worker_is_idle() -> None:
    rig = Rig(Limits(max_queued=1))
    kept, refused = make_job(), make_job()
    assert rig.scheduler.submit(kept)
    assert not rig.scheduler.submit(refused)
    assert rig.stats.rejected["overloaded"] == 1
    assert rig.scheduler.queued == 1
    worker = rig.runner()
    assert worker.ran == [kept]
    assert uuids(rig.scheduler.running()) == [("worker-1", kept.uuid)]


def test_max_blocked_refuses_a_duplicate_that_would_wait() -> None:
    rig = Rig(Limits(max_blocked=1))
    worker = rig.runner()
    running, waiting, refused = (make_job("app.sync", on_duplicate="serial") for _ in range(3))
    assert rig.scheduler.submit(running)
    assert rig.scheduler.submit(waiting)
    rig.scheduler.submit(refused)
    assert rig.stats.rejected["overloaded"] == 1
    assert rig.scheduler.blocked == 1
    assert rig.scheduler.held_bytes == len(waiting.line)
    rig.finish(worker)
    rig.finish(worker)
    assert worker.ran == [running, waiting]
    assert rig.scheduler.held_bytes == 0


def test_submit_says_false_for_a_duplicate_refused_at_max_blocked() -> None:
    rig = Rig(Limits(max_blocked=1))
    rig.runner()
    for _ in range(2):  # one runs, one waits
        assert rig.scheduler.submit(make_job("app.sync", on_duplicate="serial"))
    assert not rig.scheduler.submit(make_job("app.sync", on_duplicate="serial"))


# -- the gate, seen through the scheduler --------------------------------------------------


def test_a_discarded_duplicate_is_counted_and_never_runs() -> None:
    rig = Rig()
    worker = rig.runner()
    running, dropped = (make_job("app.sync", on_duplicate="discard") for _ in range(2))
    rig.scheduler.submit(running)
    rig.scheduler.submit(dropped)
    assert rig.stats.discarded == 1
    assert rig.scheduler.held_bytes == 0
    rig.finish(worker)
    assert worker.ran == [running]


def test_job_ended_releases_a_serial_duplicate_to_the_worker_that_frees() -> None:
    rig = Rig()
    worker = rig.runner()
    first, second = (make_job("app.sync", on_duplicate="serial") for _ in range(2))
    rig.scheduler.submit(first)
    rig.scheduler.submit(second)
    assert rig.scheduler.blocked == 1
    assert rig.scheduler.queued == 0
    rig.finish(worker)
    assert worker.ran == [first, second]
    assert rig.scheduler.blocked == 0


def test_job_ended_releases_a_serial_duplicate_to_an_idle_worker() -> None:
    rig = Rig()
    busy, idle = rig.runner(), rig.runner()
    first, second = (make_job("app.sync", on_duplicate="serial") for _ in range(2))
    rig.scheduler.submit(first)
    rig.scheduler.submit(second)
    assert idle.ran == []
    rig.scheduler.job_ended(busy.done())
    assert idle.ran == [second]


def test_held_bytes_return_to_zero_whatever_becomes_of_the_jobs() -> None:
    rig = Rig()
    worker = rig.runner()
    started = make_job("app.sync", on_duplicate="serial")
    blocked = make_job("app.sync", on_duplicate="serial")
    queued = make_job()
    delayed = make_job(delay=9)
    discarded = make_job("app.sync", on_duplicate="discard")
    for job in (started, blocked, queued, delayed, discarded):
        rig.scheduler.submit(job)
    assert rig.scheduler.held_bytes == sum(len(j.line) for j in (blocked, queued, delayed))
    rig.scheduler.cancel(uuid=queued.uuid)
    rig.scheduler.cancel(uuid=delayed.uuid)
    assert rig.scheduler.held_bytes == len(blocked.line)
    rig.finish(worker)  # the blocked duplicate starts
    assert worker.ran == [started, blocked]
    assert rig.scheduler.held_bytes == 0


# -- running and cancel ----------------------------------------------------------------


@pytest.fixture
def everywhere() -> tuple[Rig, dict[str, Job]]:
    """A scheduler holding a job in every place: on a worker, queued, blocked, delayed."""
    rig = Rig()
    rig.runner()
    jobs = {
        "worker-1": make_job("app.sync", on_duplicate="serial"),
        "queued": make_job("app.other"),
        "blocked": make_job("app.sync", on_duplicate="serial"),
        "delayed": make_job("app.sync", delay=30),
    }
    for job in jobs.values():
        rig.scheduler.submit(job)
    return rig, jobs


def test_running_lists_every_place_a_job_is(everywhere: tuple[Rig, dict[str, Job]]) -> None:
    rig, jobs = everywhere
    assert rig.scheduler.running() == [
        {"where": where, "uuid": job.uuid, "task": job.task, "message": message_of(job)}
        for where, job in jobs.items()
    ]
    assert uuids(rig.scheduler.running(task="app.sync")) == [
        ("worker-1", jobs["worker-1"].uuid),
        ("blocked", jobs["blocked"].uuid),
        ("delayed", jobs["delayed"].uuid),
    ]
    assert uuids(rig.scheduler.running(uuid=jobs["queued"].uuid)) == [
        ("queued", jobs["queued"].uuid)
    ]
    assert rig.scheduler.running(uuid=jobs["queued"].uuid, task="app.sync") == []


def test_cancel_by_uuid_cancels_the_running_job_on_its_worker(
    everywhere: tuple[Rig, dict[str, Job]],
) -> None:
    rig, jobs = everywhere
    worker = rig.workers[0]
    assert isinstance(worker, FakeRunner)
    found = rig.scheduler.cancel(uuid=jobs["worker-1"].uuid)
    assert uuids(found) == [("worker-1", jobs["worker-1"].uuid)]
    assert worker.cancels == [Outcome.CANCELLED]
    # its outcome is counted when the worker reports the end, not here
    assert rig.stats.finished["cancelled"] == 0
    assert len(rig.scheduler.running()) == 4


def test_cancel_by_task_cancels_it_everywhere(everywhere: tuple[Rig, dict[str, Job]]) -> None:
    rig, jobs = everywhere
    found = rig.scheduler.cancel(task="app.sync")
    assert uuids(found) == [
        (where, jobs[where].uuid) for where in ("worker-1", "blocked", "delayed")
    ]
    assert rig.stats.finished["cancelled"] == 2  # the blocked and the delayed one
    assert rig.stats.finished_by_task["app.sync", "cancelled"] == 2
    assert uuids(rig.scheduler.running()) == [
        ("worker-1", jobs["worker-1"].uuid),  # until its worker reports the end
        ("queued", jobs["queued"].uuid),
    ]
    assert (rig.scheduler.blocked, rig.scheduler.delayed, rig.scheduler.queued) == (0, 0, 1)


def test_cancel_by_uuid_and_task_needs_both_to_match(
    everywhere: tuple[Rig, dict[str, Job]],
) -> None:
    rig, jobs = everywhere
    assert rig.scheduler.cancel(uuid=jobs["queued"].uuid, task="app.sync") == []
    found = rig.scheduler.cancel(uuid=jobs["queued"].uuid, task="app.other")
    assert uuids(found) == [("queued", jobs["queued"].uuid)]
    assert rig.scheduler.queued == 0


def test_cancel_all_empties_every_place(everywhere: tuple[Rig, dict[str, Job]]) -> None:
    rig, jobs = everywhere
    assert uuids(rig.scheduler.cancel_all()) == [(where, job.uuid) for where, job in jobs.items()]
    assert rig.scheduler.held_bytes == 0
    assert uuids(rig.scheduler.running()) == [("worker-1", jobs["worker-1"].uuid)]
    assert rig.stats.finished["cancelled"] == 3


def test_cancelling_a_queued_job_lets_its_blocked_duplicate_in() -> None:
    rig = Rig()
    queued, waiting = (make_job("app.sync", on_duplicate="serial") for _ in range(2))
    rig.scheduler.submit(queued)
    rig.scheduler.submit(waiting)
    assert (rig.scheduler.queued, rig.scheduler.blocked) == (1, 1)
    assert uuids(rig.scheduler.cancel(uuid=queued.uuid)) == [("queued", queued.uuid)]
    assert uuids(rig.scheduler.running()) == [("queued", waiting.uuid)]
    worker = rig.runner()
    assert worker.ran == [waiting]


def test_cancelling_a_blocked_job_leaves_its_duplicate_running() -> None:
    rig = Rig()
    worker = rig.runner()
    running, waiting = (make_job("app.sync", on_duplicate="serial") for _ in range(2))
    rig.scheduler.submit(running)
    rig.scheduler.submit(waiting)
    assert uuids(rig.scheduler.cancel(uuid=waiting.uuid)) == [("blocked", waiting.uuid)]
    assert worker.cancels == []
    rig.finish(worker)
    assert worker.ran == [running]
    assert rig.scheduler.held_bytes == 0


def test_cancelling_a_job_and_its_blocked_duplicate_runs_neither() -> None:
    rig = Rig()
    first, second = (make_job("app.sync", on_duplicate="serial") for _ in range(2))
    rig.scheduler.submit(first)
    rig.scheduler.submit(second)
    assert len(rig.scheduler.cancel(task="app.sync")) == 2
    worker = rig.runner()
    assert worker.ran == []
    assert rig.scheduler.running() == []


def test_a_released_job_runs_whatever_mode_its_blocked_duplicates_asked_for() -> None:
    rig = Rig()
    worker = rig.runner()
    running = make_job("app.sync", 1, on_duplicate="serial")
    one_waiting = make_job("app.sync", 1, on_duplicate="queue_one")
    serial = make_job("app.sync", 1, on_duplicate="serial")
    for job in (running, one_waiting, serial):
        rig.scheduler.submit(job)
    assert rig.scheduler.blocked == 2
    # queue_one was checked when it came: nothing was blocked then. Released, it runs (it
    # is not checked again, against the serial one blocked behind it), and that one after it.
    rig.finish(worker)
    assert worker.ran == [running, one_waiting]
    rig.finish(worker)
    assert worker.ran == [running, one_waiting, serial]
    assert rig.settled == []
    assert rig.scheduler.blocked == 0


MODES = [None, None, "parallel", "discard", "serial", "serial", "queue_one", "queue_one"]


def test_mixed_on_duplicate_modes_lose_no_job_and_leave_none_blocked_behind_nothing() -> None:
    """Identical tasks sent with every mix of modes, ending and cancelled in random orders.

    After each step, each blocked job waits behind an identical one queued or running (whose
    end lets it in); a job that comes with no delay is discarded, blocked or run exactly as
    the rules say; in the end every job ran or was settled, once.
    """
    for seed in range(examples(30)):
        mixed_modes_run(random.Random(seed))


def mixed_modes_run(rnd: random.Random) -> None:
    rig = Rig()
    workers = [rig.runner() for _ in range(2)]
    scheduler = rig.scheduler
    sent: list[Job] = []

    def places() -> dict[str, list[Job]]:
        found: dict[str, list[Job]] = {"active": [], "blocked": [], "delayed": []}
        for where, jobs in scheduler.snapshot().places:
            found[where if where in ("blocked", "delayed") else "active"] += jobs
        return found

    for step in range(300):
        op = rnd.random()
        if op < 0.5:
            job = make_job(
                "app.same",
                rnd.randrange(2),
                on_duplicate=rnd.choice(MODES),
                delay=rnd.choice([0, 0, 0, 1.0]),
            )
            before = places()
            active = {other.key for other in before["active"]}
            blocked = {other.key for other in before["blocked"]}
            settled = len(rig.settled)
            scheduler.submit(job)
            sent.append(job)
            if job.delay or job.key is None:
                continue
            if job.on_duplicate == "discard":
                expected = "discarded" if job.key in active | blocked else "active"
            elif job.on_duplicate == "queue_one" and job.key in blocked:
                expected = "discarded"
            else:
                expected = "blocked" if job.key in active else "active"
            after = places()
            found = next((where for where, jobs in after.items() if job in jobs), None)
            if rig.settled[settled:] == [(job, "discarded")]:
                found = "discarded"
            assert found == expected, (step, job.on_duplicate)
        elif op < 0.85:
            busy = [worker for worker in workers if worker.job is not None]
            if busy:
                rig.finish(rnd.choice(busy))
        elif op < 0.93 and sent:
            scheduler.cancel(uuid=rnd.choice(sent).uuid)
        else:
            rig.timers.advance(1.0)
        now = places()
        behind = {job.key for job in now["active"]}
        assert all(job.key in behind for job in now["blocked"]), step

    rig.timers.advance(10.0)
    while busy := [worker for worker in workers if worker.job is not None]:
        for worker in busy:
            rig.finish(worker)
    assert (scheduler.queued, scheduler.blocked, scheduler.delayed) == (0, 0, 0)
    ran = [job.uuid for worker in workers for job in worker.ran]
    settled = [job.uuid for job, _ in rig.settled]
    assert sorted(ran + settled) == sorted(job.uuid for job in sent)


def test_cancel_needs_a_uuid_or_a_task_name() -> None:
    with pytest.raises(ValueError, match="uuid or a task name"):
        Rig().scheduler.cancel()


def test_cancel_of_a_running_job_signals_its_worker_process() -> None:
    timers = FakeTimers()
    handle = WorkerHandle(1, timers, cancel_grace=5, clock=timers.clock)
    process = FakeProcess()
    handle.attach(process)
    handle.ready()
    rig = Rig(timers=timers, workers=[handle])
    rig.scheduler.worker_free(handle)
    job = make_job()
    rig.scheduler.submit(job)
    assert uuids(rig.scheduler.cancel(task=job.task)) == [("worker-1", job.uuid)]
    assert process.signals == [CANCEL_SIGNALS[1]]
    assert handle.finish("cancelled") == (job, Outcome.CANCELLED)


# -- jobs held ahead ---------------------------------------------------------------------


def pipelined_rig() -> tuple[Rig, WorkerHandle, FakeProcess]:
    """A rig with one real worker handle that may always be sent a job ahead."""
    timers = FakeTimers()
    handle = WorkerHandle(1, timers, cancel_grace=5, clock=timers.clock)
    process = FakeProcess()
    handle.attach(process)
    handle.ready()
    rig = Rig(timers=timers, workers=[handle])
    rig.scheduler.ahead_allowed = lambda worker: PIPELINE_DEPTH
    rig.scheduler.is_quick = lambda job: job.task != "app.slow"
    return rig, handle, process


def test_a_backlog_sends_a_busy_worker_jobs_ahead_in_one_write_and_keeps_the_rest_in_order() -> (
    None
):
    rig, handle, process = pipelined_rig()
    jobs = [make_job() for _ in range(PIPELINE_DEPTH + 3)]
    for job in jobs:
        rig.scheduler.submit(job)
    rig.scheduler.worker_free(handle)
    ahead = jobs[1 : PIPELINE_DEPTH + 1]
    assert process.lines == [jobs[0].line, b"".join(job.line for job in ahead)]
    assert rig.scheduler.queued == 2
    assert handle.finish("ok") == (jobs[0], Outcome.OK)
    rig.scheduler.worker_free(handle)  # it still holds enough: no write
    assert len(process.lines) == 2
    while rig.scheduler.queued:
        assert len(process.lines) == 2 or len(handle.ahead) < REFILL_BELOW
        handle.finish("ok")
        rig.scheduler.worker_free(handle)
    refill = jobs[PIPELINE_DEPTH + 1 :]
    assert process.lines[2:] == [b"".join(job.line for job in refill)]
    assert [where for where, _ in uuids(rig.scheduler.running())] == ["worker-1"] + [
        "worker-1 next"
    ] * len(handle.ahead)
    assert [job.uuid for job in handle.ahead][-2:] == [job.uuid for job in refill]


def test_no_more_jobs_are_sent_ahead_than_the_pool_allows() -> None:
    rig, handle, process = pipelined_rig()
    rig.scheduler.ahead_allowed = lambda worker: 2  # say, it retires after three more tasks
    jobs = [make_job() for _ in range(6)]
    for job in jobs:
        rig.scheduler.submit(job)
    rig.scheduler.worker_free(handle)
    assert process.lines == [jobs[0].line, jobs[1].line + jobs[2].line]
    assert rig.scheduler.queued == 3


def test_an_idle_worker_is_sent_one_job_at_a_time() -> None:
    rig, handle, process = pipelined_rig()
    rig.scheduler.worker_free(handle)
    first, second = make_job(), make_job()
    rig.scheduler.submit(first)
    rig.scheduler.submit(second)  # the only worker is busy: queued, not sent ahead
    assert process.lines == [first.line]
    assert rig.scheduler.queued == 1


def test_no_job_is_sent_ahead_unless_the_pool_allows_it() -> None:
    rig, handle, process = pipelined_rig()
    rig.scheduler.ahead_allowed = lambda worker: 0
    jobs = [make_job() for _ in range(3)]
    for job in jobs:
        rig.scheduler.submit(job)
    rig.scheduler.worker_free(handle)
    assert process.lines == [jobs[0].line]


def test_cancel_reaches_a_job_held_ahead() -> None:
    rig, handle, process = pipelined_rig()
    running, held = make_job(), make_job()
    rig.scheduler.submit(running)
    rig.scheduler.submit(held)
    rig.scheduler.worker_free(handle)
    assert uuids(rig.scheduler.cancel(uuid=held.uuid)) == [("worker-1 next", held.uuid)]
    assert process.signals == [CANCEL_SIGNALS[2]]
    assert handle.finish("ok") == (running, Outcome.OK)
    assert handle.finish("cancelled") == (held, Outcome.CANCELLED)


def test_jobs_given_back_by_a_lost_worker_run_first_on_the_next_free_one() -> None:
    rig, handle, _ = pipelined_rig()
    jobs = [make_job() for _ in range(3)]
    for job in jobs:
        rig.scheduler.submit(job)
    rig.scheduler.worker_free(handle)
    handle.exited()
    rig.scheduler.forget(handle)
    rig.scheduler.put_back(handle.take_ahead()[0])
    assert rig.scheduler.queued == 2
    worker = rig.runner()
    assert worker.ran == [jobs[1]]


def test_jobs_given_back_after_close_are_abandoned() -> None:
    rig, handle, _ = pipelined_rig()
    for _ in range(2):
        rig.scheduler.submit(make_job())
    rig.scheduler.worker_free(handle)
    rig.scheduler.close()
    handle.exited()
    held, _ = handle.take_ahead()
    rig.scheduler.put_back(held)
    assert rig.scheduler.queued == 0
    assert (held[0], ABANDONED) in rig.settled


# -- closing ---------------------------------------------------------------------------


def test_close_returns_abandoned_jobs_by_place_and_refuses_later_ones(
    everywhere: tuple[Rig, dict[str, Job]],
) -> None:
    rig, jobs = everywhere
    assert rig.scheduler.close() == [
        ("queued", [jobs["queued"]]),
        ("blocked", [jobs["blocked"]]),
        ("delayed", [jobs["delayed"]]),
    ]
    assert rig.scheduler.held_bytes == 0
    assert not rig.scheduler.submit(make_job())
    assert rig.stats.rejected["overloaded"] == 0  # closing is not overload
    rig.timers.advance(60)  # the delayed job's time comes: nothing happens
    worker = rig.workers[0]
    assert isinstance(worker, FakeRunner)
    worker.done()
    rig.scheduler.worker_free(worker)
    assert worker.ran == [jobs["worker-1"]]
    assert uuids(rig.scheduler.running()) == []


def test_close_leaves_out_empty_places() -> None:
    rig = Rig()
    job = make_job()
    rig.scheduler.submit(job)
    assert rig.scheduler.close() == [("queued", [job])]
    assert rig.scheduler.close() == []


# -- durable jobs whose broker no longer holds them ---------------------------------------


def durable(job: Job, queue: str = "jobs") -> Job:
    """*job* as a durable broker delivers it from *queue*: with a receipt to settle."""
    return job._replace(broker="pg_queue", receipt=f"{job.uuid}:1:1", channel=queue)


def notified(job: Job, channel: str = "jobs") -> Job:
    """*job* as it comes on a pg_notify *channel* (its source: a lane of the queue)."""
    return job._replace(broker="pg_notify", channel=channel)


def test_a_waiting_job_no_longer_held_is_handed_back_and_the_next_one_runs() -> None:
    rig = Rig()
    rig.scheduler.held_until = lambda job: 0.0 if job.uuid == "u-a" else math.inf
    busy = rig.runner()
    first = make_job()
    rig.scheduler.submit(first)
    lapsed, held = durable(make_job(uuid="u-a")), durable(make_job(uuid="u-b"))
    rig.scheduler.submit(lapsed)
    rig.scheduler.submit(held)
    rig.finish(busy)
    assert busy.ran == [first, held]
    assert rig.settled == [(lapsed, ABANDONED)]
    assert rig.scheduler.held_bytes == 0


def test_a_worker_whose_waiting_jobs_were_all_handed_back_is_idle_again() -> None:
    rig = Rig()
    rig.scheduler.held_until = lambda job: 0.0
    busy = rig.runner()
    first = make_job()
    rig.scheduler.submit(first)
    lapsed = [durable(make_job()), durable(make_job())]
    for job in lapsed:
        rig.scheduler.submit(job)
    rig.finish(busy)
    assert rig.settled == [(job, ABANDONED) for job in lapsed]
    later = make_job()  # no receipt: never asked about
    rig.scheduler.submit(later)
    assert busy.ran == [first, later]


def test_jobs_put_back_are_checked_and_no_idle_worker_is_lost() -> None:
    rig = Rig()
    rig.scheduler.held_until = lambda job: 0.0 if job.uuid == "u-a" else math.inf
    one, two = rig.runner(), rig.runner()
    jobs = [durable(make_job(uuid=u)) for u in ("u-a", "u-b", "u-c")]
    rig.scheduler.put_back(jobs)
    assert (one.ran, two.ran) == ([jobs[1]], [jobs[2]])
    assert rig.settled == [(jobs[0], ABANDONED)]
    assert (rig.scheduler.queued, rig.scheduler.held_bytes) == (0, 0)


def test_jobs_sent_ahead_carry_the_time_their_broker_holds_them_until() -> None:
    rig, handle, process = pipelined_rig()
    rig.scheduler.held_until = lambda job: 1e9 if job.receipt else math.inf
    first, plain, leased = make_job(), make_job(), durable(make_job())
    for job in (first, plain, leased):
        rig.scheduler.submit(job)
    rig.scheduler.worker_free(handle)
    requests = [read_line(line) for line in b"".join(process.lines).splitlines()]
    # The durable job's lane takes its turn after the first job's.
    assert [(r["message"]["uuid"], r.get("start_by")) for r in requests] == [
        (first.uuid, None),
        (leased.uuid, 1e9),
        (plain.uuid, None),
    ]
    assert rig.scheduler.held_bytes == 0
    assert [job.uuid for job in handle.ahead] == [leased.uuid, plain.uuid]


def test_a_job_given_back_with_a_stale_start_by_is_sent_with_the_new_one() -> None:
    rig = Rig()
    rig.scheduler.held_until = lambda job: 2e9
    worker = rig.runner()
    job = durable(make_job())
    given_back = job._replace(line=with_start_by(job.line, 5.0))
    rig.scheduler.put_back([given_back])
    [sent] = worker.ran
    assert read_line(sent.line.rstrip(b"\n"))["start_by"] == 2e9
    assert read_line(sent.line.rstrip(b"\n"))["message"] == read_line(job.line)["message"]
    assert rig.scheduler.held_bytes == 0


def test_no_job_is_sent_ahead_behind_one_whose_task_is_not_known_quick() -> None:
    rig, handle, process = pipelined_rig()
    first, quick, slow, after = (
        notified(job) for job in (make_job(), make_job(), make_job("app.slow"), make_job())
    )
    for job in (first, quick, slow, after):
        rig.scheduler.submit(job)
    rig.scheduler.worker_free(handle)
    assert process.lines == [first.line, quick.line + slow.line]  # the slow one goes last
    assert uuids(rig.scheduler.running())[-1] == ("queued", after.uuid)
    free = rig.runner()
    rig.scheduler.worker_free(free)
    assert free.ran == [after]


def test_jobs_given_back_one_at_a_time_keep_their_order_before_the_queue() -> None:
    rig = Rig()
    busy = rig.runner()
    rig.scheduler.submit(make_job())
    queued = make_job(uuid="u-queued")
    rig.scheduler.submit(queued)
    given_back = [make_job(uuid=f"u-back-{n}") for n in range(4)]
    for job in given_back:  # as a worker gives back its held jobs, one event each
        rig.scheduler.put_back([job])
    rig.scheduler.cancel(uuid="u-back-1")
    rig.scheduler.put_back([late := make_job(uuid="u-back-late")])
    order = [job.uuid for job in (given_back[0], *given_back[2:], late, queued)]
    assert [uuid for _, uuid in uuids(rig.scheduler.running())][1:] == order
    ran = []
    while rig.scheduler.queued:
        rig.finish(busy)
        ran.append(busy.ran[-1].uuid)
    assert ran == order


def test_no_refill_goes_behind_a_held_job_whose_task_is_not_known_quick() -> None:
    rig, handle, process = pipelined_rig()
    first, quick, slow = (notified(job) for job in (make_job(), make_job(), make_job("app.slow")))
    later = [notified(make_job()) for _ in range(3)]
    for job in (first, quick, slow, *later):
        rig.scheduler.submit(job)
    rig.scheduler.worker_free(handle)
    assert process.lines == [first.line, quick.line + slow.line]
    handle.finish("ok")  # quick runs, slow is held alone: a refill would go behind it
    rig.scheduler.worker_free(handle)
    assert len(process.lines) == 2
    assert rig.scheduler.queued == 3


def test_a_job_whose_lease_may_run_out_before_its_turn_is_not_sent_ahead() -> None:
    rig, handle, process = pipelined_rig()
    rig.scheduler.ahead_wait = 5.0
    soon = time.monotonic() + 3  # held for less than a job sent ahead may wait
    rig.scheduler.held_until = lambda job: soon if job.uuid == "u-short" else 1e12
    first, plain = durable(make_job()), durable(make_job())
    short = durable(make_job(uuid="u-short"))
    for job in (first, plain, short):
        rig.scheduler.submit(job)
    rig.scheduler.worker_free(handle)
    requests = [read_line(line) for line in b"".join(process.lines).splitlines()]
    assert [r["message"]["uuid"] for r in requests] == [first.uuid, plain.uuid]
    assert uuids(rig.scheduler.running())[-1] == ("queued", "u-short")
    free = rig.runner()
    rig.scheduler.worker_free(free)  # a free worker starts it at once, while it is held
    assert free.ran == [short]


# -- fair lanes: sources take turns ------------------------------------------------------


def started(rig: Rig, worker: FakeRunner, count: int) -> list[Job]:
    """The next *count* jobs *worker* starts, one after the other (its job ends each time)."""
    jobs = []
    for _ in range(count):
        rig.finish(worker)
        jobs.append(worker.ran[-1])
    return jobs


def test_a_source_with_a_few_jobs_does_not_wait_behind_a_flood_of_another() -> None:
    rig = Rig(Limits(max_queued=20_000))
    workers = [rig.runner() for _ in range(3)]
    flood = [notified(make_job("app.flood"), "a") for _ in range(10_000)]
    for job in flood:
        rig.scheduler.submit(job)
    trickle = [notified(make_job("app.trickle"), "b") for _ in range(3)]
    for job in trickle:
        rig.scheduler.submit(job)
    order: list[Job] = []
    for _ in range(4):
        for worker in workers:
            order += started(rig, worker, 1)
    assert [job for job in order if job in trickle] == trickle  # FIFO within its source
    assert set(trickle) <= set(order[:6])  # every other start, not after 10,000 others
    assert order[:6:2] == flood[3:6]  # the flood's own order is kept too
    assert rig.scheduler.queued == 10_000 + 3 - 3 - len(order)


def test_sources_take_turns_and_each_keeps_its_order() -> None:
    rig = Rig()
    worker = rig.runner()
    rig.scheduler.submit(first := make_job())
    a = [notified(make_job(), "a") for _ in range(4)]
    b = [notified(make_job(), "b") for _ in range(2)]
    queue = [durable(make_job(), "q") for _ in range(3)]
    for job in (a[0], a[1], a[2], b[0], queue[0], a[3], queue[1], b[1], queue[2]):
        rig.scheduler.submit(job)
    # running lists them in the order they will start.
    expected = [a[0], b[0], queue[0], a[1], b[1], queue[1], a[2], queue[2], a[3]]
    assert [uuid for where, uuid in uuids(rig.scheduler.running())] == [first.uuid] + [
        job.uuid for job in expected
    ]
    assert started(rig, worker, len(expected)) == expected
    assert rig.scheduler.queued == 0


def test_a_channel_and_a_queue_of_the_same_name_are_two_sources() -> None:
    rig = Rig()
    worker = rig.runner()
    rig.scheduler.submit(make_job())
    notify = [notified(make_job(), "jobs") for _ in range(3)]
    queue = [durable(make_job(), "jobs") for _ in range(2)]
    for job in (*notify, *queue):
        rig.scheduler.submit(job)
    assert started(rig, worker, 5) == [notify[0], queue[0], notify[1], queue[1], notify[2]]


def test_each_scheduled_task_has_a_lane_of_its_own() -> None:
    """Jobs made inside the service (producers) take turns by task with the channels."""
    rig = Rig(Limits(max_queued=2_000))
    worker = rig.runner()
    for _ in range(1_000):
        rig.scheduler.submit(notified(make_job("app.flood"), "a"))
    ticks = [make_job("app.tick"), make_job("app.report")]  # as producers submit them
    for job in ticks:
        rig.scheduler.submit(job)
    assert set(started(rig, worker, 4)) >= set(ticks)


def test_jobs_given_back_go_first_whatever_their_source_and_keep_their_order() -> None:
    rig = Rig()
    worker = rig.runner()
    rig.scheduler.submit(make_job())
    waiting = [notified(make_job(), "a"), durable(make_job(), "q")]
    for job in waiting:
        rig.scheduler.submit(job)
    back = [durable(make_job(), "q"), notified(make_job(), "b"), notified(make_job(), "a")]
    rig.scheduler.put_back(back[:2])
    rig.scheduler.put_back(back[2:])
    assert started(rig, worker, 5) == [*back, *waiting]


def test_cancel_and_running_see_every_lane() -> None:
    rig = Rig()
    rig.runner()
    rig.scheduler.submit(make_job())
    jobs = [
        notified(make_job("app.x"), "a"),
        notified(make_job("app.y"), "a"),
        notified(make_job("app.x"), "b"),
        durable(make_job("app.x"), "q"),
        make_job("app.x"),
    ]
    for job in jobs:
        rig.scheduler.submit(job)
    rig.scheduler.put_back([back := notified(make_job("app.x"), "c")])
    listed = {
        uuid for where, uuid in uuids(rig.scheduler.running(task="app.x")) if where == "queued"
    }
    assert listed == {job.uuid for job in (*jobs, back) if job.task == "app.x"}
    held = rig.scheduler.held_bytes
    found = rig.scheduler.cancel(task="app.x")
    assert {uuid for _, uuid in uuids(found)} >= listed
    assert rig.scheduler.queued == 1
    assert rig.scheduler.held_bytes == held - sum(
        len(job.line) for job in (*jobs, back) if job.task == "app.x"
    )
    assert [uuid for where, uuid in uuids(rig.scheduler.running()) if where == "queued"] == [
        jobs[1].uuid
    ]
    # The lanes emptied by the cancel take turns again once they have jobs.
    again = [notified(make_job(), "b"), durable(make_job(), "q")]
    for job in again:
        rig.scheduler.submit(job)
    worker = rig.workers[0]
    assert isinstance(worker, FakeRunner)
    assert started(rig, worker, 3) == [jobs[1], *again]


def test_max_queued_counts_the_jobs_of_every_lane() -> None:
    rig = Rig(Limits(max_queued=3))
    rig.runner()
    rig.scheduler.submit(make_job())
    for channel in ("a", "b", "c"):
        assert rig.scheduler.submit(notified(make_job(), channel))
    assert not rig.scheduler.submit(notified(make_job(), "d"))
    assert rig.stats.rejected["overloaded"] == 1
    assert rig.scheduler.queued == 3


def test_jobs_sent_ahead_take_turns_between_sources() -> None:
    rig, handle, process = pipelined_rig()
    a = [notified(make_job(), "a") for _ in range(6)]
    b = [notified(make_job(), "b") for _ in range(2)]
    for job in (*a, *b):
        rig.scheduler.submit(job)
    rig.scheduler.worker_free(handle)
    sent = [read_line(line)["message"]["uuid"] for line in b"".join(process.lines).splitlines()]
    assert sent == [job.uuid for job in (a[0], b[0], a[1], b[1], a[2])]


def test_queued_from_counts_a_brokers_jobs_waiting_in_its_lanes_and_given_back() -> None:
    rig = Rig()
    rig.runner()
    rig.scheduler.submit(make_job())
    for job in (notified(make_job(), "a"), durable(make_job(), "q1"), durable(make_job(), "q2")):
        rig.scheduler.submit(job)
    rig.scheduler.put_back([durable(make_job(), "q1"), notified(make_job(), "b")])
    assert rig.scheduler.queued_from("pg_queue") == 3
    assert rig.scheduler.queued_from("pg_notify") == 2
    assert rig.scheduler.queued_from(None) == 0
    assert rig.scheduler.queued == 5


def test_sources_that_come_and_go_keep_their_turns() -> None:
    """Socket connections each have a lane: many come and go, the queue stays fair."""
    rig = Rig()
    worker = rig.runner()
    rig.scheduler.submit(make_job())
    for connection in range(500):
        job = notified(make_job(), f"socket:{connection}")
        rig.scheduler.submit(job)
        assert started(rig, worker, 1) == [job]
    flood = [notified(make_job(), "socket:flood") for _ in range(100)]
    for job in flood:
        rig.scheduler.submit(job)
    late = notified(make_job(), "socket:late")
    rig.scheduler.submit(late)
    assert started(rig, worker, 2) == [flood[0], late]

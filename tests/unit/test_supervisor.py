"""The pool of workers (recycling, loss, shutdown order), with scripted worker processes.

A :class:`ScriptedWorker` is a real :class:`WorkerProcess` on a socket pair and a pipe: the
test writes the worker's events to the socket, and closing the pipe is the process's end
(what its pidfd would tell). It records the lines and signals it gets, and ends when asked
to stop or signalled (unless told to ignore SIGTERM).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import pytest

from dispatcher.config import Limits, Pool
from dispatcher.config import Service as ServiceSettings
from dispatcher.schema import Outcome
from dispatcher.server import pool_shutdown
from dispatcher.server.catalogue import TaskCatalogue
from dispatcher.server.jobs import Job
from dispatcher.server.launched_process import WorkerProcess
from dispatcher.server.logformat import JsonFormatter
from dispatcher.server.protocol import RECALL_SIGNAL, STOP_LINE, event_line, read_line
from dispatcher.server.scheduler import Scheduler
from dispatcher.server.stats import ServiceStats
from dispatcher.server.supervisor import Supervisor
from dispatcher.server.timers import Timers
from support.scheduling import make_job


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"SIGRTMIN+{signum - signal.SIGRTMIN}"


class ScriptedWorker(WorkerProcess):
    """A worker process whose events the test writes and whose end the test decides."""

    def __init__(self, worker_id: int, launcher: ScriptedLauncher) -> None:
        self._end_read, self._end_write = os.pipe()
        ours, self._theirs = socket.socketpair()
        ours.setblocking(False)
        super().__init__(10_000 + worker_id, self._end_read, ours)
        self.worker_id = worker_id
        self.lines: list[bytes] = []
        self.signals: list[int] = []
        self.ignores_sigterm = False
        self._launcher = launcher
        self._ended = 0

    def send(self, line: bytes) -> bool:
        self.lines += line.splitlines(keepends=True)  # jobs sent ahead share a write
        if line == STOP_LINE:
            self._launcher.note(self.worker_id, "stop")
            self.end()
        else:
            self._launcher.note(self.worker_id, "line")
        return True

    def signal(self, signum: int) -> None:
        self.signals.append(signum)
        self._launcher.note(self.worker_id, _signal_name(signum))
        if signum == RECALL_SIGNAL:
            return  # a worker handles it and carries on
        if signum is not signal.SIGTERM or not self.ignores_sigterm:
            self.end(-signum)

    def emit(self, event: dict[str, Any]) -> None:
        """Write an event, as the worker would."""
        self._theirs.sendall(event_line(event))

    def ready(self) -> None:
        self.emit({"event": "ready", "tasks": ["app.work"]})

    def done(self, outcome: str = "ok", uuid: str | None = None) -> None:
        """End the next job sent to it (or say *uuid* ended)."""
        now = time.time()
        if uuid is None:
            uuid = self._next_uuid()
        event = {"event": "done", "uuid": uuid, "outcome": outcome}
        self.emit({**event, "started": now, "finished": now})

    def _next_uuid(self) -> str:
        runs = [line for line in self.lines if line.startswith(b'{"op":"run"')]
        self._ended += 1
        uuid: str = read_line(runs[self._ended - 1].rstrip(b"\n"))["message"]["uuid"]
        return uuid

    def ping(self) -> None:
        """A control request: its reply shows every earlier event has been handled."""
        self.emit({"event": "control", "command": "ping", "data": {}})

    def end(self, status: int = 0) -> None:
        """The process ends with *status* (its pidfd becomes readable; the fork server tells)."""
        if self._end_write >= 0:
            os.close(self._end_write)
            self._end_write = -1
            if self._launcher.on_exit is not None:
                self._launcher.on_exit(self.pid, status)

    def close(self) -> None:
        if self.pidfd >= 0:  # the supervisor closes it once done with the worker
            super().close()
        self.end()
        self._theirs.close()

    def running(self, job: Job) -> bool:
        return job.line in self.lines

    def replies(self) -> int:
        return sum(line.startswith(b'{"op":"reply"') for line in self.lines)


class ScriptedLauncher:
    """Hands out :class:`ScriptedWorker` processes; keeps a journal of what they were told."""

    def __init__(self) -> None:
        self.processes: dict[int, ScriptedWorker] = {}
        self.journal: list[tuple[int, str]] = []
        """``(worker id, "stop" | signal name)``, in order."""
        self.on_exit: Callable[[int, int], None] | None = None
        """Told of each process's end and exit status, as the fork server tells the service."""
        self._news = anyio.Event()

    def start(self) -> None:
        pass

    def prepare(self) -> object:
        """A new fork server for a reload: none can start here (the reload fails)."""
        raise OSError("no fork server in this test")

    async def launch(self, worker_id: int) -> ScriptedWorker:
        process = ScriptedWorker(worker_id, self)
        self.processes[worker_id] = process
        self.note(worker_id, "launched")
        return process

    def close(self) -> None:
        for process in self.processes.values():
            process.close()

    def note(self, worker_id: int, what: str) -> None:
        if what not in ("line", "launched"):
            self.journal.append((worker_id, what))
        self._news.set()
        self._news = anyio.Event()

    async def until(self, condition: Callable[[], bool]) -> None:
        """Wait until *condition* holds (it is looked at whenever a worker is told something)."""
        with anyio.fail_after(5):
            while not condition():
                await self._news.wait()

    async def settle(self, process: ScriptedWorker) -> None:
        """Wait until the supervisor has handled every event *process* has written."""
        replies = process.replies()
        process.ping()
        await self.until(lambda: process.replies() > replies)


class SlowlyFailingReloads(ScriptedLauncher):
    """A launcher whose new code fails to import, once the test lets the import end."""

    def __init__(self) -> None:
        super().__init__()
        self.import_ends = anyio.Event()

    def prepare(self) -> object:
        return object()

    async def import_report(self, link: object) -> dict[str, Any]:
        await self.import_ends.wait()
        return {"ok": False, "module": "app", "error": "SyntaxError: invalid syntax"}

    def discard(self, link: object) -> None:
        pass


@dataclass
class PoolRig:
    """A running supervisor and what it was built with."""

    launcher: ScriptedLauncher
    supervisor: Supervisor
    scheduler: Scheduler
    stats: ServiceStats

    @property
    def p(self) -> dict[int, ScriptedWorker]:
        """The scripted processes, by worker id."""
        return self.launcher.processes


@contextlib.asynccontextmanager
async def running_pool(
    workers: int, launcher: ScriptedLauncher | None = None, **pool: Any
) -> AsyncIterator[PoolRig]:
    """A supervisor keeping *workers* scripted workers, wired as the service wires it."""
    settings = ServiceSettings(
        pool=Pool(min_workers=workers, max_workers=workers, max_worker_lifetime=None, **pool)
    )
    launcher = launcher or ScriptedLauncher()
    timers, stats = Timers(), ServiceStats()
    scheduler = Scheduler(Limits(), timers, stats, workers=lambda: supervisor.workers)
    supervisor = Supervisor(
        settings, launcher, timers, scheduler, TaskCatalogue(), stats, on_fatal=lambda error: None
    )
    scheduler.on_backlog = supervisor.wake
    launcher.on_exit = supervisor.worker_exited
    try:
        async with anyio.create_task_group() as group:
            await group.start(supervisor.run, name="worker-pool")
            await launcher.until(lambda: len(launcher.processes) == workers)
            yield PoolRig(launcher, supervisor, scheduler, stats)
            group.cancel_scope.cancel()
    finally:
        launcher.close()


@pytest.mark.anyio
async def test_a_worker_that_ran_max_tasks_per_worker_is_stopped_and_replaced() -> None:
    async with running_pool(1, max_tasks_per_worker=2) as pool:
        jobs = [make_job() for _ in range(3)]
        for job in jobs:
            pool.scheduler.submit(job)
        pool.p[0].ready()
        for job in jobs[:2]:
            await pool.launcher.until(lambda job=job: pool.p[0].running(job))
            pool.p[0].done()
        await pool.launcher.until(lambda: len(pool.p) == 2)
        assert pool.launcher.journal == [(0, "stop")]
        assert not pool.p[0].running(jobs[2])
        pool.p[1].ready()
        await pool.launcher.until(lambda: pool.p[1].running(jobs[2]))
        assert pool.stats.finished == {Outcome.OK: 2}


@pytest.mark.anyio
async def test_a_worker_that_dies_loses_its_task_and_is_replaced() -> None:
    async with running_pool(1) as pool:
        lost, queued = make_job("app.crash"), make_job()
        pool.scheduler.submit(lost)
        pool.scheduler.submit(queued)
        pool.p[0].ready()
        await pool.launcher.until(lambda: pool.p[0].running(lost))
        pool.p[0].end()  # it dies, unasked
        await pool.launcher.until(lambda: len(pool.p) == 2)
        assert pool.stats.finished == {Outcome.WORKER_LOST: 1}
        assert pool.stats.workers_lost == 1
        pool.p[1].ready()
        await pool.launcher.until(lambda: pool.p[1].running(queued))


@pytest.mark.anyio
@pytest.mark.parametrize("when", ["busy", "idle"])
async def test_a_worker_reporting_the_end_of_another_job_is_stopped(when: str) -> None:
    """A task forging ``done`` for another uuid (or a child it forked, reporting its task
    again) does not end the job the worker runs: its worker is stopped, the job lost."""
    async with running_pool(1) as pool:
        job = make_job()
        pool.scheduler.submit(job)
        pool.p[0].ready()
        await pool.launcher.until(lambda: pool.p[0].running(job))
        if when == "idle":
            pool.p[0].done()
            await pool.launcher.settle(pool.p[0])
        pool.p[0].done(uuid="zzz")
        await pool.launcher.until(lambda: pool.p[0].signals == [signal.SIGKILL])
        await pool.launcher.until(lambda: len(pool.p) == 2)
        lost = {"busy": {Outcome.WORKER_LOST: 1}, "idle": {Outcome.OK: 1}}[when]
        assert pool.stats.finished == lost


@pytest.mark.anyio
async def test_a_worker_busy_with_a_quick_task_is_sent_the_next_job_ahead() -> None:
    async with running_pool(1) as pool:
        jobs = [make_job() for _ in range(4)]
        for job in jobs:
            pool.scheduler.submit(job)
        pool.p[0].ready()
        await pool.launcher.until(lambda: pool.p[0].running(jobs[0]))
        assert not pool.p[0].running(jobs[1])  # its task's pace is not known yet
        pool.p[0].done()
        await pool.launcher.until(lambda: pool.p[0].running(jobs[3]))  # 1 runs, 2 and 3 ahead
        for _ in range(3):
            pool.p[0].done()
        await pool.launcher.settle(pool.p[0])
        assert pool.stats.finished == {Outcome.OK: 4}
        assert sum(line.startswith(b'{"op":"run"') for line in pool.p[0].lines) == 4


@pytest.mark.anyio
async def test_a_worker_is_never_sent_more_jobs_than_it_runs_before_it_retires() -> None:
    async with running_pool(1, max_tasks_per_worker=4) as pool:
        jobs = [make_job() for _ in range(8)]
        for job in jobs:
            pool.scheduler.submit(job)
        pool.p[0].ready()
        await pool.launcher.until(lambda: pool.p[0].running(jobs[0]))
        pool.p[0].done()  # now quick: 1 runs, 2 and 3 held, and no more
        await pool.launcher.until(lambda: pool.p[0].running(jobs[3]))
        for _ in range(3):
            pool.p[0].done()
        await pool.launcher.until(lambda: len(pool.p) == 2)
        assert sum(line.startswith(b'{"op":"run"') for line in pool.p[0].lines) == 4
        assert pool.stats.finished == {Outcome.OK: 4}
        pool.p[1].ready()
        await pool.launcher.until(lambda: pool.p[1].running(jobs[4]))


@pytest.mark.anyio
async def test_a_job_held_ahead_by_a_worker_that_dies_runs_on_its_replacement() -> None:
    async with running_pool(1) as pool:
        warm_up, lost, held = make_job(), make_job(), make_job()
        for job in (warm_up, lost, held):
            pool.scheduler.submit(job)
        pool.p[0].ready()
        await pool.launcher.until(lambda: pool.p[0].running(warm_up))
        pool.p[0].done()
        await pool.launcher.until(lambda: pool.p[0].running(held))
        pool.p[0].end()  # it dies running `lost`; `held` never started
        await pool.launcher.until(lambda: len(pool.p) == 2)
        assert pool.stats.finished == {Outcome.OK: 1, Outcome.WORKER_LOST: 1}
        pool.p[1].ready()
        await pool.launcher.until(lambda: pool.p[1].running(held))
        pool.p[1].done()
        await pool.launcher.settle(pool.p[1])
        assert pool.stats.finished == {Outcome.OK: 2, Outcome.WORKER_LOST: 1}


async def running_with_two_held(pool: PoolRig) -> list[Job]:
    """Worker 0 runs a job (its task known quick by then) and holds the next two ahead;
    returns those two."""
    warm_up, running, *held = (make_job() for _ in range(4))
    for job in (warm_up, running, *held):
        pool.scheduler.submit(job)
    pool.p[0].ready()
    await pool.launcher.until(lambda: pool.p[0].running(warm_up))
    pool.p[0].done()
    await pool.launcher.until(lambda: pool.p[0].running(held[-1]))
    return held


@pytest.mark.anyio
async def test_a_worker_whose_held_jobs_a_failed_reload_recalled_is_replaced(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="dispatcher")
    async with running_pool(1) as pool:
        held = await running_with_two_held(pool)
        reloaded = await pool.supervisor.reload()
        assert reloaded.error == "cannot start a new fork server: no fork server in this test"
        assert pool.p[0].signals == [RECALL_SIGNAL]
        pool.p[0].done()  # `running` ends; the held ones come back unstarted
        pool.p[0].done("recalled")
        pool.p[0].done("recalled")
        await pool.launcher.until(lambda: len(pool.p) == 2)  # it would recall any job sent
        assert pool.launcher.journal == [(0, "SIGRTMIN+10"), (0, "stop")]
        assert pool.stats.finished == {Outcome.OK: 2}
        assert "worker 0 gave back the jobs it held: replacing it" in caplog.messages
        pool.p[1].ready()
        await pool.launcher.until(lambda: pool.p[1].running(held[1]))
        assert pool.p[1].lines.index(held[0].line) < pool.p[1].lines.index(held[1].line)
        pool.p[1].done()
        pool.p[1].done()
        await pool.launcher.settle(pool.p[1])
        assert pool.stats.finished == {Outcome.OK: 4}  # each ran once


@pytest.mark.anyio
async def test_a_recalled_worker_idle_when_the_reload_fails_is_replaced(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="dispatcher")
    launcher = SlowlyFailingReloads()
    async with running_pool(1, launcher=launcher) as pool:
        held = await running_with_two_held(pool)
        outcome: list[str | None] = []

        async def reload() -> None:
            outcome.append((await pool.supervisor.reload()).error)

        async with anyio.create_task_group() as group:
            group.start_soon(reload)
            await launcher.until(lambda: pool.p[0].signals == [RECALL_SIGNAL])
            pool.p[0].done()  # while the new code imports: `running` ends, the rest come back
            pool.p[0].done("recalled")
            pool.p[0].done("recalled")
            await launcher.settle(pool.p[0])
            assert launcher.journal == [(0, "SIGRTMIN+10")]  # idle now, kept until the end
            launcher.import_ends.set()
        assert outcome == ["cannot import app: SyntaxError: invalid syntax"]
        await launcher.until(lambda: len(pool.p) == 2)
        assert launcher.journal == [(0, "SIGRTMIN+10"), (0, "stop")]
        assert "worker 0 gave back the jobs it held: replacing it" in caplog.messages
        pool.p[1].ready()
        await launcher.until(lambda: pool.p[1].running(held[1]))
        pool.p[1].done()
        pool.p[1].done()
        await launcher.settle(pool.p[1])
        assert pool.stats.finished == {Outcome.OK: 4}  # each ran once


@pytest.mark.anyio
async def test_a_worker_recalled_by_someone_else_is_replaced_not_sent_its_job_again() -> None:
    async with running_pool(1) as pool:
        job = make_job()
        pool.scheduler.submit(job)
        pool.p[0].ready()
        await pool.launcher.until(lambda: pool.p[0].running(job))
        pool.p[0].done("recalled")  # SIGRTMIN+10 sent by hand: it now gives back everything
        await pool.launcher.until(lambda: len(pool.p) == 2)
        assert pool.launcher.journal == [(0, "stop")]
        assert pool.p[0].lines.count(job.line) == 1  # not sent to it again
        pool.p[1].ready()
        await pool.launcher.until(lambda: pool.p[1].running(job))
        pool.p[1].done()
        await pool.launcher.settle(pool.p[1])
        assert pool.stats.finished == {Outcome.OK: 1}


@pytest.mark.anyio
async def test_shutdown_stops_idle_workers_first_then_waits_for_busy_ones_up_to_grace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    grace = 0.2
    async with running_pool(3) as pool:
        finishing = make_job("app.work", on_duplicate="serial")
        stubborn = make_job("app.stubborn")
        for job in (finishing, stubborn):
            pool.scheduler.submit(job)
        pool.p[0].ready()
        await pool.launcher.until(lambda: pool.p[0].running(finishing))
        pool.p[1].ready()
        await pool.launcher.until(lambda: pool.p[1].running(stubborn))
        pool.p[2].ready()
        await pool.launcher.settle(pool.p[2])  # idle now
        blocked = make_job("app.work", on_duplicate="serial")
        delayed = make_job("app.later", delay=600)
        pool.scheduler.submit(blocked)
        pool.scheduler.submit(delayed)

        shut_down = anyio.Event()

        async def shut_down_pool() -> None:
            await pool.supervisor.shutdown(grace)
            shut_down.set()

        with caplog.at_level(logging.INFO, logger="dispatcher.pool"):
            async with anyio.create_task_group() as group:
                began = time.monotonic()
                group.start_soon(shut_down_pool)
                await pool.launcher.until(lambda: pool.launcher.journal != [])
                assert pool.launcher.journal == [(2, "stop")]  # the idle worker, at once
                pool.p[0].done()  # the busy one that finishes in time is stopped then
                await pool.launcher.until(lambda: len(pool.launcher.journal) == 2)
                assert pool.launcher.journal[1] == (0, "stop")
                await pool.launcher.until(lambda: len(pool.launcher.journal) == 3)
                waited = time.monotonic() - began
                assert pool.launcher.journal[2] == (1, "SIGTERM")  # the one still busy
                with anyio.fail_after(5):
                    await shut_down.wait()

        assert waited >= grace
        assert pool.supervisor.workers == []
        assert pool.launcher.journal == [(2, "stop"), (0, "stop"), (1, "SIGTERM")]
        assert pool.stats.finished == {Outcome.OK: 1, Outcome.KILLED: 1}
        assert pool.stats.finished_by_task["app.stubborn", Outcome.KILLED] == 1
        assert pool.p[1].lines == [stubborn.line]  # no stop line: it was busy
        messages = [r.getMessage() for r in caplog.records if r.name == "dispatcher.pool"]
        assert (
            f"shutting down with 1 blocked task abandoned: {blocked.task} (uuid {blocked.uuid})"
            in messages
        )
        assert (
            f"shutting down with 1 delayed task abandoned: {delayed.task} (uuid {delayed.uuid})"
            in messages
        )


@pytest.mark.anyio
async def test_shutdown_names_every_queued_task_it_abandons_twenty_a_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """docs/delivery.md: they are "listed as abandoned in its log" (not 20 and "N more")."""
    async with running_pool(1) as pool:  # its worker never ready: everything stays queued
        queued = [make_job("app.work", n) for n in range(45)]
        for job in queued:
            pool.scheduler.submit(job)
        with caplog.at_level(logging.INFO, logger="dispatcher.pool"), anyio.fail_after(5):
            await pool.supervisor.shutdown(grace=0.1)
    lines = [r.getMessage() for r in caplog.records if "abandoned" in r.getMessage()]
    assert lines[0].startswith("shutting down with 45 queued tasks abandoned: app.work (uuid ")
    assert lines[0].endswith(" and 25 more, named on 2 lines after this one")
    assert lines[1].startswith("shutting down: queued tasks 21-40 of 45 abandoned: app.work")
    assert lines[2].startswith("shutting down: queued tasks 41-45 of 45 abandoned: app.work")
    named = [uuid for line in lines for uuid in re.findall(r"\(uuid ([^)]+)\)", line)]
    assert named == [job.uuid for job in queued]
    assert [len(re.findall(r"\(uuid ", line)) for line in lines] == [20, 20, 5]


def test_beyond_the_most_a_stop_names_the_other_abandoned_tasks_are_counted_by_task(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool_shutdown, "MAX_ABANDONED_LOGGED", 40)
    lost = [make_job("app.work", n) for n in range(50)] + [make_job("app.other")]
    with caplog.at_level(logging.INFO, logger="dispatcher.pool"):
        pool_shutdown.log_abandoned("delayed", lost)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert lines[0].endswith(
        " and 31 more, named on 1 line after this one and counted by task on the last"
    )
    assert lines[1].startswith("shutting down: delayed tasks 21-40 of 51 abandoned: ")
    assert lines[2] == (
        "shutting down: delayed tasks 41-51 of 51 abandoned, not named (only the first 40 "
        "are), by task: app.work 10, app.other 1"
    )


@pytest.mark.anyio
async def test_shutdown_with_only_idle_workers_does_not_wait_for_the_grace() -> None:
    async with running_pool(2) as pool:
        pool.p[0].ready()
        await pool.launcher.settle(pool.p[0])
        # worker 1 never reports ready: it is killed, not asked to stop
        with anyio.fail_after(5):
            await pool.supervisor.shutdown(grace=3600)
        assert pool.launcher.journal == [(0, "stop"), (1, "SIGKILL")]
        assert pool.supervisor.workers == []
        assert pool.stats.finished == {}


@pytest.mark.anyio
async def test_a_worker_that_ignores_sigterm_at_shutdown_is_killed_half_a_second_later(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """As docs/service.md says: SIGTERM, then SIGKILL half a second later (logged)."""
    async with running_pool(1) as pool:
        job = make_job("app.stubborn")
        pool.scheduler.submit(job)
        pool.p[0].ready()
        await pool.launcher.until(lambda: pool.p[0].running(job))
        pool.p[0].ignores_sigterm = True
        began = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="dispatcher.pool"), anyio.fail_after(5):
            await pool.supervisor.shutdown(grace=0.05)
        took = time.monotonic() - began
        assert 0.5 <= took < 2.0
        assert pool.launcher.journal == [(0, "SIGTERM"), (0, "SIGKILL")]
        assert "worker 0 (pid 10000) still running 0.5 s after SIGTERM: killing it" in [
            r.getMessage() for r in caplog.records
        ]
        assert pool.supervisor.workers == []
        assert pool.stats.finished == {Outcome.KILLED: 1}


@pytest.mark.anyio
async def test_the_line_of_a_worker_lost_under_a_task_says_how_it_ended(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with running_pool(1) as pool:
        first, second = make_job("app.exits"), make_job("app.killed")
        pool.scheduler.submit(first)
        pool.scheduler.submit(second)
        with caplog.at_level(logging.ERROR, logger="dispatcher.tasks"):
            pool.p[0].ready()
            await pool.launcher.until(lambda: pool.p[0].running(first))
            pool.p[0].end(7)  # os._exit(7) in the task
            await pool.launcher.until(lambda: len(pool.p) == 2)
            pool.p[1].ready()
            await pool.launcher.until(lambda: pool.p[1].running(second))
            pool.p[1].end(-signal.SIGKILL)  # kill -9 from outside
            await pool.launcher.until(lambda: len(pool.p) == 3)
            pool.p[2].ready()
            await pool.launcher.settle(pool.p[2])
        lines = [r.getMessage() for r in caplog.records if r.name == "dispatcher.tasks"]
        assert lines == [
            f"worker 0 (pid 10000) died while running task app.exits (uuid {first.uuid}): "
            "worker_lost (exit status 7)",
            f"worker 1 (pid 10001) died while running task app.killed (uuid {second.uuid}): "
            "worker_lost (killed by SIGKILL)",
        ]


@pytest.mark.anyio
async def test_workers_dying_idle_in_a_row_are_replaced_ever_more_slowly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``os._exit()`` in ``on_idle``: a new worker every idle_timeout, for ever, at first."""
    async with running_pool(1) as pool:
        with caplog.at_level(logging.WARNING, logger="dispatcher.pool"):
            pool.p[0].ready()
            await pool.launcher.settle(pool.p[0])
            pool.p[0].end(6)  # the first is replaced at once
            await pool.launcher.until(lambda: len(pool.p) == 2)
            pool.p[1].ready()
            await pool.launcher.settle(pool.p[1])
            pool.p[1].end(6)
            died = time.monotonic()
            await pool.launcher.until(lambda: len(pool.p) == 3)
            paused = time.monotonic() - died
            # A worker that ran a task ends the run: one lost under its task is replaced
            # at once, whatever came before.
            job = make_job("app.work")
            pool.scheduler.submit(job)
            pool.p[2].ready()
            await pool.launcher.until(lambda: pool.p[2].running(job))
            pool.p[2].done()
            await pool.launcher.settle(pool.p[2])
            pool.p[2].end(6)
            replaced = time.monotonic()
            await pool.launcher.until(lambda: len(pool.p) == 4)
            assert time.monotonic() - replaced < 0.4
            with anyio.fail_after(5):
                while len(caplog.records) < 3:  # logged as the worker is reaped
                    await anyio.sleep(0.01)
        assert paused >= 0.5
        lines = [(r.levelname, r.getMessage()) for r in caplog.records]
        assert lines == [
            ("WARNING", "worker 0 (pid 10000) exited unexpectedly (exit status 6)"),
            (
                "ERROR",
                "worker 1 (pid 10001) exited unexpectedly without a task (exit status 6; 2 "
                "workers in a row; see its own lines above for why: a worker hook, on_idle?): "
                "starting the next one in 0.5 s",
            ),
            ("WARNING", "worker 2 (pid 10002) exited unexpectedly (exit status 6)"),
        ]


def test_a_stop_names_abandoned_tasks_within_one_budget_of_bytes_across_its_places(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Within what the log's writer holds (1 MiB) whatever the task names and the places.

    10,000 names a place, with a task name of 62 characters, made 1.17 MB of JSON lines for
    one place.
    """
    task = "awx.main.tasks.system.handle_success_and_failure_notifications"
    places = {where: [make_job(task, n) for n in range(10_000)] for where in ("queued", "delayed")}
    with caplog.at_level(logging.INFO, logger="dispatcher.pool"):
        pool_shutdown.log_abandoned("queued", places["queued"])
    assert (
        sum(len(r.getMessage()) for r in caplog.records) <= 540_000
    )  # was 836,831 (1.17 MB as JSON lines)
    caplog.clear()
    budget = pool_shutdown.NamingBudget()  # one stop's, shared by its places
    with caplog.at_level(logging.INFO, logger="dispatcher.pool"):
        for where, lost in places.items():
            pool_shutdown.log_abandoned(where, lost, budget)
    lines = [r.getMessage() for r in caplog.records]
    assert sum(map(len, lines)) <= 540_000
    named = [uuid for line in lines for uuid in re.findall(r"\(uuid ([^)]+)\)", line)]
    assert named == [job.uuid for job in places["queued"][: len(named)]]
    assert 4_000 < len(named) < 10_000
    assert lines[-2].startswith(f"shutting down: queued tasks {len(named) + 1}-10000 of 10000")
    assert lines[-2].endswith(f"by task: {task} {10_000 - len(named)}")
    assert lines[-1] == (
        "shutting down with 10000 delayed tasks abandoned, not named (a stop names 512000 "
        f"characters of abandoned tasks at most, used up by those before), by task: {task} 10000"
    )


@pytest.mark.parametrize("character", ["\U0001f600", "é", "\x00"])
def test_a_stop_names_abandoned_tasks_within_the_budget_as_written_whatever_their_uuids(
    caplog: pytest.LogCaptureFixture, character: str
) -> None:
    """Counted as the JSON log writes them: a uuid of other characters is written longer.

    A uuid (any text, 255 characters at most) of emoji is written 12 times as long (``\\ud83d
    \\ude00``), of control characters 5 times (``\\\\x00``): counted by its characters, the
    names written made 2.4 to 5.8 MB of JSON lines, beyond what the log's writer holds (1 MiB).
    """
    lost = [make_job("app.work", uuid=character * 255 + str(n)) for n in range(10_000)]
    with caplog.at_level(logging.INFO, logger="dispatcher.pool"):
        pool_shutdown.log_abandoned("queued", lost)
    written = [JsonFormatter().format(record) for record in caplog.records]
    assert sum(map(len, written)) <= 540_000
    assert sum(line.count("(uuid ") for line in written) > 100  # as many as fit

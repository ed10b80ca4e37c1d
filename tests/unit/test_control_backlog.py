"""Control commands over a long backlog: the service goes on while they walk it.

A ``running`` once described every job held before its reply was cut to size, and a
``cancel`` walked and settled every one of them in one go: with a million jobs queued the
service's event loop stood still for seconds (no dispatch, no timers, no lease renewals,
so a durable job's lease ran out and another service ran it too). These tests hold a long
backlog in a real scheduler, run the commands as the service does, and watch another task
of the same event loop take its turns meanwhile.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

import anyio
import pytest

from dispatcher.config import Limits, load_settings
from dispatcher.control import entries
from dispatcher.server.control import ControlCommands
from dispatcher.server.control_shapes import MAX_LISTED_JOBS
from dispatcher.server.jobs import Job
from dispatcher.server.protocol import run_line
from dispatcher.server.scheduler import Scheduler
from dispatcher.server.stats import ServiceStats
from dispatcher.server.view import ServiceView
from support.scheduling import FakeRunner, FakeTimers

BACKLOG = 50_000


class CountedLine(bytes):
    """A job's request line that counts how often it is decoded (each described job is)."""

    decoded = 0

    def decode(self, *args: Any, **kwargs: Any) -> str:
        CountedLine.decoded += 1
        return super().decode(*args, **kwargs)


def line(task: str, args: list[Any]) -> bytes:
    body = json.dumps({"uuid": "u", "task": task, "args": args, "kwargs": {}})
    return CountedLine(run_line(body, "jobs"))


@dataclass
class Backlog:
    """A scheduler with one busy worker and *BACKLOG* jobs queued behind it."""

    stats: ServiceStats = field(default_factory=ServiceStats)
    settled: list[tuple[str, str]] = field(default_factory=list)
    worker: FakeRunner = field(default_factory=lambda: FakeRunner(1))

    def __post_init__(self) -> None:
        self.scheduler = Scheduler(
            Limits(),
            FakeTimers(),
            self.stats,
            lambda: [self.worker],
            settle=lambda job, outcome: self.settled.append((job.uuid, outcome)),
        )
        self.scheduler.worker_free(self.worker)
        supervisor = SimpleNamespace(workers=[self.worker], min_workers=1, max_workers=1)
        view = ServiceView(self.stats, self.scheduler, cast(Any, supervisor), None, None)  # type: ignore[arg-type]
        self.commands = ControlCommands(view, load_settings({"version": 1}), self.stats)

    def submit(self, uuid: str, task: str = "app.big", args: list[Any] | None = None) -> Job:
        job = Job(uuid=uuid, task=task, line=line(task, args or []))
        assert self.scheduler.submit(job)
        return job


@pytest.fixture
def backlog() -> Backlog:
    held = Backlog()
    held.submit("u-running", task="app.first")  # on the worker
    big, small = line("app.big", [1]), line("app.big", [2])
    for n in range(BACKLOG):
        job = Job(uuid=f"u-{n}", task="app.big", line=small if n % 1000 else big)
        assert held.scheduler.submit(job)
    CountedLine.decoded = 0
    return held


async def while_ticking(
    command: str, data: dict[str, Any], backlog: Backlog, on_tick: Any = None
) -> tuple[dict[str, Any], int]:
    """Run *command* as the service does, with another task taking turns; (reply, turns).

    *on_tick*, if given, is called at each turn the other task takes during the command
    (with the turn's number).
    """
    reply: dict[str, Any] = {}
    turns = 0
    async with anyio.create_task_group() as tasks:

        async def command_task() -> None:
            reply.update(await backlog.commands.handle(command, data))
            tasks.cancel_scope.cancel()

        async def other_task() -> None:
            nonlocal turns
            while True:
                await anyio.sleep(0)
                turns += 1
                if on_tick is not None:
                    on_tick(turns)

        tasks.start_soon(other_task)
        tasks.start_soon(command_task)
    return reply, turns


def test_running_over_a_long_backlog_describes_what_its_reply_shows_and_counts_the_rest(
    backlog: Backlog,
) -> None:
    reply, turns = anyio.run(while_ticking, "running", {}, backlog)
    listed = entries(reply)
    assert list(listed)[:3] == ["worker-1", "queued-0", "queued-1"]
    assert 1000 < len(listed) < BACKLOG
    assert reply["omitted"] == BACKLOG + 1 - len(listed)
    # Only the jobs listed, and the one whose JSON found the reply full, were described.
    assert CountedLine.decoded == len(listed) + 1 <= MAX_LISTED_JOBS
    assert turns >= len(listed) // 1000  # the event loop ran while they were described


def test_running_with_a_task_filter_walks_the_backlog_a_slice_at_a_time(
    backlog: Backlog,
) -> None:
    backlog.submit("u-other", task="app.other")
    reply, turns = anyio.run(while_ticking, "running", {"task": "app.big"}, backlog)
    listed = entries(reply)
    assert len(listed) + reply["omitted"] == BACKLOG
    assert "u-other" not in {task["uuid"] for task in listed.values()}
    assert CountedLine.decoded == len(listed) + 1
    assert turns >= BACKLOG // 1000


def test_cancel_by_task_of_a_long_backlog_lets_the_service_go_on_and_settles_each_once(
    backlog: Backlog,
) -> None:
    submitted_meanwhile: list[Job] = []

    def meanwhile(turn: int) -> None:
        """What the service does between two slices: take jobs, dispatch, end a task."""
        if turn % 20 == 0:
            submitted_meanwhile.append(backlog.submit(f"u-new-{turn}"))
            submitted_meanwhile.append(backlog.submit(f"u-other-{turn}", task="app.other"))
            ended = backlog.worker.done()
            backlog.scheduler.job_ended(ended)
            backlog.scheduler.worker_free(backlog.worker)

    reply, turns = anyio.run(while_ticking, "cancel", {"task": "app.big"}, backlog, meanwhile)
    assert turns >= BACKLOG // 1000  # the event loop ran between slices
    listed = entries(reply)
    assert len(listed) + reply["omitted"] == BACKLOG
    cancelled = [uuid for uuid, outcome in backlog.settled if outcome == "cancelled"]
    assert len(cancelled) == len(set(cancelled)) == BACKLOG  # each once
    assert set(cancelled) == {f"u-{n}" for n in range(BACKLOG)}
    assert backlog.stats.finished["cancelled"] == BACKLOG
    # What arrived while it settled the jobs it took is the service's to run, not cancelled.
    ran = [job.uuid for job in backlog.worker.ran]
    assert ran[0] == "u-running"
    assert set(ran[1:]) <= {job.uuid for job in submitted_meanwhile}
    waiting = [t["uuid"] for t in backlog.scheduler.running() if t["where"] == "queued"]
    assert sorted(ran[1:] + waiting) == sorted(job.uuid for job in submitted_meanwhile)
    assert backlog.scheduler.held_bytes == sum(
        len(job.line) for job in submitted_meanwhile if job.uuid in waiting
    )


def test_cancel_by_args_matches_a_slice_at_a_time_and_takes_jobs_wherever_they_went(
    backlog: Backlog,
) -> None:
    """The jobs with ``args`` [1] are every 1000th; one starts while the messages are read."""
    started: list[str] = []

    def meanwhile(turn: int) -> None:
        if turn == 5:  # the worker ends its task and takes the next queued job: u-0
            backlog.scheduler.job_ended(backlog.worker.done())
            backlog.scheduler.worker_free(backlog.worker)
            assert backlog.worker.job is not None
            started.append(backlog.worker.job.uuid)

    reply, turns = anyio.run(while_ticking, "cancel", {"args": [1]}, backlog, meanwhile)
    assert started == ["u-0"]
    assert turns >= BACKLOG // 1000
    found = {task["uuid"]: task["where"] for task in entries(reply).values()}
    assert found.pop("u-0") == "worker-1"  # cancelled on the worker it went to
    assert backlog.worker.cancels == ["cancelled"]
    assert found == {f"u-{n}": "queued" for n in range(1000, BACKLOG, 1000)}
    assert backlog.scheduler.queued == BACKLOG - len(found) - 1


@pytest.mark.timeout(120)
def test_a_filtered_walk_pauses_by_one_clock_while_the_loop_is_busy() -> None:
    """The walk and its listing share one clock: pauses every few milliseconds, not every job.

    With a clock each, each pause of one let the other's turn run out: on a loop whose other
    work takes 2 ms a turn, the walk paused after every job (seconds for a few thousand).
    """
    jobs = 2_000
    held = Backlog()
    held.submit("u-running", task="app.first")
    for n in range(jobs):
        assert held.scheduler.submit(
            Job(uuid=f"u-{n}", task="app.big", line=line("app.big", [n % 2]))
        )
    other_turns = 0

    async def busy_meanwhile() -> dict[str, Any]:
        nonlocal other_turns
        reply: dict[str, Any] = {}
        async with anyio.create_task_group() as tasks:

            async def command_task() -> None:
                reply.update(await held.commands.handle("running", {"args": [1]}))
                tasks.cancel_scope.cancel()

            async def other_task() -> None:
                nonlocal other_turns
                while True:
                    end = time.perf_counter() + 0.002
                    while time.perf_counter() < end:
                        pass
                    other_turns += 1
                    await anyio.sleep(0)

            tasks.start_soon(other_task)
            tasks.start_soon(command_task)
        return reply

    reply = anyio.run(busy_meanwhile)
    assert len(entries(reply)) + reply.get("omitted", 0) == jobs // 2
    assert other_turns < jobs // 10, f"the loop paused the walk {other_turns} times for {jobs} jobs"

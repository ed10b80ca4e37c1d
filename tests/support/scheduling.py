"""Stand-ins for what the scheduling core talks to: a manual clock, fake worker processes.

:class:`FakeTimers` implements ``Scheduling`` on a clock that moves only when a test calls
:meth:`FakeTimers.advance`; :class:`FakeProcess` records what a worker handle sends and the
signals it gives; :class:`FakeRunner` is a worker as the scheduler alone sees it.
"""

from __future__ import annotations

import heapq
import itertools
import json
import signal
from collections.abc import Callable
from typing import Any

from dispatcher.schema import Outcome
from dispatcher.server.jobs import Job
from dispatcher.server.protocol import run_line
from dispatcher.server.timers import Timer

_uuids = itertools.count(1)


def make_job(
    task: str = "app.work",
    *args: Any,
    uuid: str | None = None,
    timeout: float = 0,
    delay: float = 0,
    on_duplicate: str | None = None,
) -> Job:
    """A job as the intake makes it from a task message (tracked when ``on_duplicate`` asks)."""
    uuid = uuid or f"uuid-{next(_uuids)}"
    message: dict[str, Any] = {"uuid": uuid, "task": task, "args": list(args), "kwargs": {}}
    if on_duplicate is not None:
        message["on_duplicate"] = on_duplicate
    tracked = on_duplicate is not None and on_duplicate != "parallel"
    return Job(
        uuid=uuid,
        task=task,
        line=run_line(json.dumps(message), "jobs"),
        timeout=timeout,
        delay=delay,
        on_duplicate=on_duplicate,
        key=json.dumps([task, list(args), {}]) if tracked else None,
    )


class FakeTimers:
    """``Scheduling`` on a manual clock: :meth:`advance` fires the calls that fall due."""

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()

    def call_later(self, delay: float, function: Callable[..., Any], *args: Any) -> Timer:
        timer = Timer(function, args)
        heapq.heappush(self._heap, (self.now + delay, next(self._order), timer))
        return timer

    def pending(self) -> int:
        """The calls still to be made (cancelled ones not counted)."""
        return sum(1 for _, _, timer in self._heap if timer.function is not None)

    def clock(self) -> float:
        """The current time (to give a worker handle as its clock)."""
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock on, firing each call due by then at its own time, in order."""
        target = self.now + seconds
        while self._heap and self._heap[0][0] <= target:
            deadline, _, timer = heapq.heappop(self._heap)
            call = timer.take()
            if call is not None:
                self.now = deadline
                function, args = call
                function(*args)
        self.now = target


class FakeProcess:
    """A worker process that records the lines it is sent and the signals it gets.

    With ``partial`` set, a write leaves part of the line waiting (``send`` returns ``False``).
    """

    def __init__(self, pid: int = 4242) -> None:
        self.pid = pid
        self.lines: list[bytes] = []
        self.signals: list[int] = []
        self.partial = False

    def send(self, line: bytes) -> bool:
        self.lines.append(line)
        return not self.partial

    def signal(self, signum: int) -> None:
        self.signals.append(signum)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.signal(signal.SIGTERM)


class FakeRunner:
    """A worker as the scheduler sees it: records the jobs it is given and its cancels."""

    def __init__(self, worker_id: int) -> None:
        self.id = worker_id
        self.job: Job | None = None
        self.available = True
        """Clear it to make the worker not ready (stopping, say) while idle."""
        self.ran: list[Job] = []
        self.cancels: list[Outcome] = []

    @property
    def is_ready(self) -> bool:
        return self.available and self.job is None

    room_ahead = 0
    """A fake runner holds no job ahead."""
    ahead: tuple[Job, ...] = ()
    pending_ahead: list[Job] = []  # noqa: RUF012 (never changed)

    def hold_ahead(self, jobs: list[Job]) -> None:
        raise RuntimeError(f"worker {self.id} holds no job ahead")

    def cancel_ahead(self, job: Job, reason: Outcome = Outcome.CANCELLED) -> bool:
        return False

    def run(self, job: Job) -> None:
        if not self.is_ready:
            raise RuntimeError(f"worker {self.id} cannot run a job")
        self.job = job
        self.ran.append(job)

    def cancel(self, reason: Outcome = Outcome.CANCELLED) -> None:
        self.cancels.append(reason)

    def done(self) -> Job:
        """End the job it runs; return it."""
        job, self.job = self.job, None
        assert job is not None
        return job

"""The two testing modes: run every submitted task at once (eager), or record them (captured).

Each is an interceptor of the publisher's sending layer
(:mod:`dispatcher.publish.interception`): a submission is built and checked exactly as for
real, then handed to the mode instead of a broker. Nothing connects to a database.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final

from dispatcher.publish import interception
from dispatcher.publish.errors import InvalidSubmission
from dispatcher.publish.mistakes import did_you_mean_task
from dispatcher.publish.registry import registry
from dispatcher.publish.submission import Submission
from dispatcher.schema import DispatcherError, InvalidArgumentValue
from dispatcher.testing.records import CapturedTask, TaskRun
from dispatcher.testing.running import InProcessRunner

DEFAULT_QUEUE: Final = "default"
"""The queue of a task that names none, when no config is set up."""

MAX_RUNS: Final = 10_000
"""The most runs :meth:`Captured.run_all` makes: tasks that keep submitting tasks never end."""


def _refusal(name: str, allow_unregistered: bool) -> str | None:
    """Why the task *name* is refused, when it is not registered here and must be."""
    if allow_unregistered or name in registry:
        return None
    return (
        f"cannot submit {name}: it is not a task registered in this process, and "
        "dispatcher.testing runs registered tasks only (import the module that "
        f"defines it){did_you_mean_task(name, registry.names())}"
    )


def _recorded(
    submissions: Sequence[Submission], connection: object | None, allow_unregistered: bool
) -> list[CapturedTask]:
    """*submissions* as records, once each is known to be a task registered here.

    :raises InvalidSubmission: naming the first unregistered task (then none is recorded).
    """
    for submission in submissions:
        refusal = _refusal(submission.message["task"], allow_unregistered)
        if refusal is not None:
            raise InvalidSubmission(refusal)
    in_transaction = connection is not None
    return [CapturedTask(submission, in_transaction) for submission in submissions]


class NotRecorded(DispatcherError, LookupError):
    """What was asked for was not recorded: no run of that uuid, no captured task pending."""


def _task_name(task: str | Callable[..., Any]) -> str:
    """The name of *task*: a name, or a registered function or class."""
    if isinstance(task, str):
        return task
    entry = registry.find(task)
    if entry is None:
        raise InvalidArgumentValue(
            f"{getattr(task, '__qualname__', task)!r} is not a registered task"
        )
    return entry.name


class Eager:
    """Runs each task as it is submitted, in this process, before the submission returns.

    What :func:`eager` yields. In a ``batch()`` block, the tasks run when the block ends.
    """

    def __init__(
        self, *, propagate: bool = True, default_queue: str | None = DEFAULT_QUEUE
    ) -> None:
        self.default_queue = default_queue
        """The queue of a task that names none, when no config is set up."""
        self.submitted: list[CapturedTask] = []
        """Every submission taken, in order."""
        self._runner = InProcessRunner(propagate)

    @property
    def runs(self) -> list[TaskRun]:
        """Every run, in the order they ended (a task submitted by a task ends first)."""
        return self._runner.runs

    def run_of(self, submission: Submission | str) -> TaskRun:
        """The (last) run of *submission*, or of the submission with that uuid.

        :raises LookupError: when it has not run.
        """
        uuid = submission if isinstance(submission, str) else submission.uuid
        for run in reversed(self.runs):
            if run.uuid == uuid:
                return run
        raise NotRecorded(f"no task with uuid {uuid!r} has run")

    def refusal(self, task: str) -> str | None:
        """Why *task*, a name not registered here, is refused: it cannot be run."""
        return _refusal(task, allow_unregistered=False)

    def send(self, submissions: Sequence[Submission], connection: object | None) -> None:
        """Run each of *submissions*, in order (the interceptor's side).

        As the tasks of one send (a ``batch()``) all reach a service, each runs even when
        one before it raised; then the first exception is raised.
        """
        records = _recorded(submissions, connection, allow_unregistered=False)
        self.submitted += records
        first_error: Exception | None = None
        for record in records:
            try:
                self._runner.run(record.message)
            except Exception as exc:
                first_error = first_error or exc
        if first_error is not None:
            raise first_error

    async def asend(self, submissions: Sequence[Submission], connection: object | None) -> None:
        """Run each of *submissions*, in order; a coroutine task in the caller's loop.

        One that raises does not stop the others, as for :meth:`send`.
        """
        records = _recorded(submissions, connection, allow_unregistered=False)
        self.submitted += records
        first_error: Exception | None = None
        for record in records:
            try:
                await self._runner.arun(record.message)
            except Exception as exc:
                first_error = first_error or exc
        if first_error is not None:
            raise first_error


class Captured:
    """Records each submission instead of sending it; runs them when asked.

    What :func:`captured` yields. Iterating over it, or :attr:`tasks`, gives every
    :class:`CapturedTask` in order; :attr:`pending` those not run yet.
    """

    def __init__(
        self,
        *,
        propagate: bool = True,
        default_queue: str | None = DEFAULT_QUEUE,
        allow_unregistered: bool = False,
    ) -> None:
        self.default_queue = default_queue
        """The queue of a task that names none, when no config is set up."""
        self.allow_unregistered = allow_unregistered
        """Whether names not registered here are recorded (running them is an error)."""
        self.tasks: list[CapturedTask] = []
        """Every submission recorded, in order."""
        self.pending: list[CapturedTask] = []
        """The submissions not run yet, in order."""
        self._runner = InProcessRunner(propagate)

    @property
    def runs(self) -> list[TaskRun]:
        """Every run so far, in the order they ended."""
        return self._runner.runs

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self) -> Iterator[CapturedTask]:
        return iter(list(self.tasks))

    def for_task(self, task: str | Callable[..., Any]) -> list[CapturedTask]:
        """The submissions of *task* (a name, or a registered function or class), in order."""
        name = _task_name(task)
        return [record for record in self.tasks if record.task == name]

    def clear(self) -> None:
        """Forget every submission and run."""
        self.tasks.clear()
        self.pending.clear()
        self.runs.clear()

    def run(self, record: CapturedTask | None = None) -> TaskRun:
        """Run *record* (default: the first pending submission) and return its run.

        What it submits is recorded, not run. Running a record that already ran runs it again.

        :raises LookupError: when nothing is pending, or the task is not registered here.
        """
        record = self._take(record)
        return self._runner.run(record.message)

    async def arun(self, record: CapturedTask | None = None) -> TaskRun:
        """:meth:`run` from asyncio code: a coroutine task is awaited in the running loop."""
        record = self._take(record)
        return await self._runner.arun(record.message)

    def run_all(self, max_runs: int = MAX_RUNS) -> list[TaskRun]:
        """Run the pending submissions in order, and those they submit, until none is left.

        :raises RuntimeError: when more than *max_runs* would be needed (tasks that keep
            submitting tasks).
        """
        runs: list[TaskRun] = []
        while self.pending:
            self._check_limit(len(runs), max_runs)
            runs.append(self.run())
        return runs

    async def arun_all(self, max_runs: int = MAX_RUNS) -> list[TaskRun]:
        """:meth:`run_all` from asyncio code."""
        runs: list[TaskRun] = []
        while self.pending:
            self._check_limit(len(runs), max_runs)
            runs.append(await self.arun())
        return runs

    def refusal(self, task: str) -> str | None:
        """Why *task*, a name not registered here, is refused, unless :attr:`allow_unregistered`."""
        return _refusal(task, self.allow_unregistered)

    def send(self, submissions: Sequence[Submission], connection: object | None) -> None:
        """Record *submissions* (the interceptor's side)."""
        records = _recorded(submissions, connection, self.allow_unregistered)
        self.tasks += records
        self.pending += records

    async def asend(self, submissions: Sequence[Submission], connection: object | None) -> None:
        """:meth:`send` from asyncio code."""
        self.send(submissions, connection)

    def _take(self, record: CapturedTask | None) -> CapturedTask:
        if record is None:
            if not self.pending:
                raise NotRecorded("no captured task is pending")
            return self.pending.pop(0)
        if record in self.pending:
            self.pending.remove(record)
        return record

    def _check_limit(self, done: int, max_runs: int) -> None:
        if done >= max_runs:
            raise RuntimeError(
                f"run_all: {max_runs} tasks ran and {len(self.pending)} are still pending "
                "(do tasks keep submitting tasks?)"
            )


@contextmanager
def eager(*, propagate: bool = True, default_queue: str | None = DEFAULT_QUEUE) -> Iterator[Eager]:
    """Run every task submitted in the block at once, in this process; yield the :class:`Eager`.

    *propagate*: an exception a task raises is raised by the submission (``.delay()``...)
    after being recorded; when false, it is only recorded in the run (``outcome="error"``).
    *default_queue*: the queue of a task that names none, when no config is set up.
    """
    mode = Eager(propagate=propagate, default_queue=default_queue)
    previous = interception.install(mode)
    try:
        yield mode
    finally:
        interception.install(previous)


@contextmanager
def captured(
    *,
    propagate: bool = True,
    default_queue: str | None = DEFAULT_QUEUE,
    allow_unregistered: bool = False,
) -> Iterator[Captured]:
    """Record every task submitted in the block instead of sending it; yield the record.

    *propagate*: an exception a task raises in :meth:`Captured.run` is raised again after
    being recorded. *default_queue*: as for :func:`eager`. *allow_unregistered*: record
    tasks not registered in this process too (such as another service's), instead of refusing
    them.
    """
    mode = Captured(
        propagate=propagate, default_queue=default_queue, allow_unregistered=allow_unregistered
    )
    previous = interception.install(mode)
    try:
        yield mode
    finally:
        interception.install(previous)

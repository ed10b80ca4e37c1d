"""Tasks the service runs in the tests. Each leaves evidence in a file the test reads."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import time
from typing import Any, Final

from dispatcher.publish import DispatcherCancel, DispatcherExit, task
from dispatcher.server.protocol import CANCEL_SIGNALS


def _record(path: str, **fields: Any) -> None:
    line = json.dumps({"pid": os.getpid(), "time": time.time(), **fields}) + "\n"
    with open(path, "a", encoding="utf-8") as evidence:
        evidence.write(line)


@task()
def record(path: str, *args: Any, **kwargs: Any) -> None:
    """Write the arguments it got (and the pid that ran it) to *path*."""
    _record(path, args=list(args), kwargs=kwargs)


@task()
def sleep_then_record(path: str, seconds: float, label: str = "") -> None:
    """Record the start, sleep, record the end."""
    _record(path, event="start", label=label)
    time.sleep(seconds)
    _record(path, event="end", label=label)


@task()
def wait_for_file(path: str, gate: str, label: str = "") -> None:
    """Record the start, wait (30 s at most) until the file *gate* exists, record the end."""
    _record(path, event="start", label=label)
    deadline = time.monotonic() + 30
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
    _record(path, event="end", label=label)


@task()
def wait_for_own_gate(path: str, gates: str, label: str = "") -> None:
    """Record the start, wait (60 s at most) until the folder *gates* holds a file named by
    this worker's pid, record the end: each run of the job (a retry's too, in another
    worker) ends when the test opens that run's own gate (see :func:`open_gate`)."""
    _record(path, event="start", label=label)
    gate = os.path.join(gates, str(os.getpid()))
    deadline = time.monotonic() + 60
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
    _record(path, event="end", label=label)


def open_gate(gates: str, pid: int) -> None:
    """Let the run of :func:`wait_for_own_gate` in the worker *pid* end."""
    with open(os.path.join(gates, str(pid)), "w"):
        pass


@task()
async def async_record(path: str, value: Any) -> None:
    """An ``async def`` task."""
    await asyncio.sleep(0.01)
    _record(path, args=[value], kind="async")


@task()
def fail(path: str) -> None:
    """Record, then raise."""
    _record(path, event="fail")
    raise ValueError("this task always fails")


@task()
def fail_with_type_error(path: str) -> None:
    """Record, then raise a ``TypeError`` of its own (a bug in it, not in its arguments)."""
    _record(path, event="fail")
    raise TypeError("this task always fails")


@task()
def fail_saying(path: str, text: str) -> None:
    """Record, then raise a ValueError saying *text*."""
    _record(path, event="fail")
    raise ValueError(text)


@task()
def fail_at_length(path: str, lines: int, width: int) -> None:
    """Record, then raise a ValueError of *lines* lines of *width* characters (a long log)."""
    _record(path, event="fail")
    raise ValueError("\n".join(f"{number:05d}" + "x" * width for number in range(lines)))


@task()
def noop() -> None:
    """Does nothing (for load tests)."""


@task()
def ignore(*args: Any, **kwargs: Any) -> None:
    """Does nothing with what it is given (a message as large as a test wants)."""


@task()
def sleep_recording_cancel(path: str, seconds: float, label: str = "") -> None:
    """Record the start; sleep; record ``end``, or ``cancelled`` (then re-raise) if cancelled."""
    _record(path, event="start", label=label)
    try:
        time.sleep(seconds)
    except DispatcherCancel:
        _record(path, event="cancelled", label=label)
        raise
    _record(path, event="end", label=label)


@task(timeout=0.5)
def sleep_under_its_own_timeout(path: str, seconds: float) -> None:
    """``sleep_recording_cancel`` with a timeout of its own, which no message repeats."""
    sleep_recording_cancel(path, seconds)


@task()
def stubborn_sleep(path: str, seconds: float) -> None:
    """Catch and ignore the cancel exception: only SIGTERM/SIGKILL stop it."""
    print(f"stubborn sleep of {seconds} s begins", flush=True)
    _record(path, event="start")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            time.sleep(deadline - time.monotonic())
        except DispatcherCancel:
            _record(path, event="ignored cancel")
    _record(path, event="end")


@task()
def deaf_sleep(path: str, seconds: float) -> None:
    """Ignore cancels and SIGTERM, as code stuck in C might: only SIGKILL stops it."""
    for signum in (signal.SIGUSR1, signal.SIGTERM, *CANCEL_SIGNALS):
        signal.signal(signum, signal.SIG_IGN)
    _record(path, event="start")
    time.sleep(seconds)
    _record(path, event="end")


@task(bind=True)
def follow_up(dispatcher: Any, path: str, command: str, data: dict[str, Any]) -> None:
    """A bound task: send a control command to its own service, record the reply."""
    reply = dispatcher.control(command, data)
    _record(path, event="control", uuid=dispatcher.uuid, worker=dispatcher.worker_id, reply=reply)


@task()
def sleep_then_exit(path: str, seconds: float, exit: bool = True) -> None:
    """Record, sleep, then (if *exit*) end this worker process."""
    _record(path, event="start", label="exits" if exit else "stays")
    time.sleep(seconds)
    if exit:
        raise DispatcherExit


@task()
def step_wall_clock(path: str, seconds: float, run_for: float) -> None:
    """Step its worker's wall clock (``time.time()``) by *seconds*, as an NTP step does,
    then run *run_for* seconds more (the monotonic clock goes on unmoved)."""
    real = time.time
    time.time = lambda: real() + seconds  # for the rest of the worker's life
    _record(path, event="stepped", seconds=seconds)
    time.sleep(run_for)


@task()
def die(path: str) -> None:
    """Record, then kill this worker process without a word (as a crash would)."""
    _record(path, event="die")
    os._exit(3)


@task()
def exit_worker(path: str) -> None:
    """Record, then end this worker process."""
    _record(path, event="exit")
    raise DispatcherExit


@task()
async def async_sleep(path: str, seconds: float) -> None:
    """An ``async def`` task that sleeps."""
    _record(path, event="start", kind="async")
    await asyncio.sleep(seconds)
    _record(path, event="end", kind="async")


@task()
async def async_cancellable(path: str, seconds: float, how: str) -> str:
    """An ``async def`` task recording what a cancel brings into it: waiting (``sleep``),
    computing without awaiting (``busy``), or waiting for subtasks (``gather``,
    ``wait_for``)."""
    _record(path, event="start", kind="async")
    subtasks_cancelled: list[str] = []

    async def subtask(name: str) -> None:
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            subtasks_cancelled.append(name)
            raise

    try:
        if how == "sleep":
            await asyncio.sleep(seconds)
        elif how == "busy":
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                pass
        elif how == "gather":
            await asyncio.gather(subtask("a"), subtask("b"))
        elif how == "wait_for":  # its inner task is cancelled before the clean-up runs
            await asyncio.wait_for(subtask("w"), seconds * 2)
        elif how == "own timeout":  # asyncio's own cancellation is not the service's
            try:
                async with asyncio.timeout(0.05):
                    await asyncio.sleep(seconds)
            except TimeoutError:
                _record(path, event="own timeout")
                return "ok"
    except DispatcherCancel:
        await asyncio.sleep(0)  # the loop still serves the clean-up
        _record(path, event="cancelled", subtasks=sorted(subtasks_cancelled))
        raise
    except BaseException as exc:
        _record(path, event="got", kind=type(exc).__name__)
        raise
    _record(path, event="end")
    return "ok"


@task()
def prints_then_stops_its_children(path: str) -> None:
    """Print a line, fork three children, stop them with SIGTERM (as a pool's terminate()
    does); they inherit the worker's SIGTERM handler, which must leave the output alone."""
    print("parent line, once", flush=True)
    time.sleep(0.2)  # the worker has read it into the task's buffer, which the children copy
    children = []
    for _ in range(3):
        pid = os.fork()
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        children.append(pid)
    time.sleep(0.2)  # the children have started (their handler is inherited at the fork)
    for pid in children:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
    _record(path, event="stopped children")


@task()
def leaves_an_orphan(path: str, seconds: float) -> None:
    """Start a shell that starts a sleep in the background and exits: the sleep is orphaned."""
    shell = subprocess.Popen(
        ["sh", "-c", f"sleep {seconds} > /dev/null 2>&1 & echo $!"], stdout=subprocess.PIPE
    )
    assert shell.stdout is not None
    orphan = int(shell.stdout.readline())
    shell.wait()
    _record(path, event="orphaned", orphan=orphan, worker_parent=os.getppid())


@task()
def print_lines(path: str, label: str, count: int) -> None:
    """Print *count* lines ``<label> line <n>`` (half with print, half straight to fd 2)."""
    for n in range(count):
        if n % 2:
            os.write(2, f"{label} line {n}\n".encode())
        else:
            print(f"{label} line {n}")
    _record(path, event="printed", label=label)


@task()
def print_bytes(path: str, size: int) -> None:
    """Write *size* bytes to standard output, in lines of 1 KiB."""
    line = "z" * 1023 + "\n"
    lines, rest = divmod(size, len(line))
    print(line * lines + "z" * rest, end="", flush=True)
    _record(path, event="printed", size=size)


FORGED_NAME: Final = "\x1b]0;pwned\x07\n2026-11-30 14:00:00,000 INFO dispatcher.service: FORGED"
"""A terminal's title change, then a line of the service's own, hidden in a name."""


@task()
def log_with_forged_names(path: str) -> None:
    """Log through a logger, and at a level, whose names would forge a line of the log."""
    logging.addLevelName(55, "CRIT" + FORGED_NAME)
    logging.getLogger("x" + FORGED_NAME).error("from a forged logger name")
    logging.getLogger("support.forged").log(55, "at a forged level name")
    _record(path, event="logged")


DURABLE_TICKS = "durable_ticks"
"""The durable queue of :func:`tick` (a task's queue is fixed when it is registered)."""


@task()
def fail_first(path: str) -> None:
    """Record, then raise the first time it runs with *path* (its retry succeeds)."""
    first = not os.path.exists(path)
    _record(path, event="fail_first")
    if first:
        raise ValueError("the first attempt fails")


@task()
def give_back(path: str, value: Any) -> Any:
    """Record, then return *value* (a durable queue stores it as the job's result)."""
    _record(path, event="give_back")
    return value


@task(queue=DURABLE_TICKS)
def tick(path: str) -> None:
    """Record a run (scheduled on the durable queue :data:`DURABLE_TICKS`)."""
    _record(path, event="tick")


@task(queue=DURABLE_TICKS, max_attempts=1)
def failing_tick(path: str) -> None:
    """Record a run, then fail: a task that must not run twice (one attempt only)."""
    _record(path, event="failing_tick")
    raise RuntimeError("this tick failed")


class _ItemsFail(dict):  # type: ignore[type-arg]
    """A dict whose items cannot be read: encoding it as JSON raises RuntimeError."""

    def items(self) -> Any:
        raise RuntimeError("no items")


class _IterFails(list):  # type: ignore[type-arg]
    """A list that cannot be iterated: encoding it (or walking it) raises TypeError."""

    def __iter__(self) -> Any:
        raise TypeError("cannot iterate")


class _ItemsExit(dict):  # type: ignore[type-arg]
    """A dict whose items cannot be read: encoding it as JSON raises SystemExit."""

    def items(self) -> Any:
        raise SystemExit(3)


@task()
def give_back_unencodable(path: str, kind: str) -> Any:
    """Record (the side effect), then return a value whose JSON encoding raises."""
    _record(path, event="give_back", kind=kind)
    if kind == "exit":
        return _ItemsExit(a=1)
    return _ItemsFail(a=1) if kind == "dict" else _IterFails([1])


LONG_NAME: Final = "support.service_tasks.a_long_name_" + "x" * (255 - 34)
"""The longest valid task name (255 characters)."""


@task(name=LONG_NAME)
def fail_with_a_long_name(path: str) -> None:
    """Record, then raise; registered under the longest name a task may have."""
    _record(path, event="fail")
    raise ValueError("this task always fails")


@task()
def step_then_give_back(path: str, seconds: float, label: str, value: Any = None) -> Any:
    """Record the start, sleep in steps of 0.1 s (a stop of the process, SIGSTOP, does not
    shorten the time left), record the end; return *value*, or raise when it is ``"fail"``."""
    _record(path, event="start", label=label)
    for _ in range(round(seconds * 10)):
        time.sleep(0.1)
    _record(path, event="end", label=label)
    if value == "fail":
        raise ValueError(f"{label} failed after its run")
    return value

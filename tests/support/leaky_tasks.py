"""Tasks that leave the state of their worker process changed behind them.

Logging configured anew, standard streams closed, asyncio tasks left pending or the event
loop closed, signal handlers, masks and alarms changed, a forked child returning into the
worker, exceptions whose ``__str__`` raises, context variables set: each would spoil every
later task of its worker if the worker did not put things back.
"""

from __future__ import annotations

import asyncio
import logging
import logging.config
import os
import signal
import subprocess
import sys
import time
from contextvars import ContextVar
from typing import Any

from dispatcher.publish import batch, task
from dispatcher.publish.batching import current_batch
from dispatcher.server import BaseWorker

log = logging.getLogger("leaky")


@task()
def says(text: str) -> str:
    """Print *text*, log it on a logger of the task's own, and return it."""
    print(f"printed {text}")
    log.warning("logged %s", text)
    return text


_LOGGING: dict[str, Any] = {
    "dict_config": {  # Django's LOGGING does this: every logger existing so far is disabled
        "version": 1,
        "handlers": {"out": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["out"], "level": "WARNING"},
    },
    "bare_dict_config": {"version": 1},
}


@task()
def configures_logging(how: str) -> None:
    """Configure logging as an application might, replacing the worker's set-up."""
    if how == "basic_config":
        logging.basicConfig(force=True, level=logging.ERROR, format="APP %(message)s")
    elif how == "disable":
        logging.disable(logging.CRITICAL)
    else:
        logging.config.dictConfig(_LOGGING[how])


@task()
def closes_streams() -> None:
    """Close ``sys.stdout`` and ``sys.stderr``."""
    sys.stdout.close()
    sys.stderr.close()


@task()
async def leaves_a_task_pending(what: str) -> str:
    """Leave an asyncio task running after returning: ticking, or raising ``SystemExit``."""

    async def ticks() -> None:
        while True:
            await asyncio.sleep(0.01)
            print("LEFTOVER TICK")

    async def exits() -> None:
        await asyncio.sleep(0.05)
        raise SystemExit("LEFTOVER EXIT")

    async def stubborn() -> None:
        while True:
            try:
                await ticks()
            except asyncio.CancelledError:
                print("LEFTOVER REFUSES ITS CANCEL")

    leftovers = {"ticks": ticks, "exits": exits, "stubborn": stubborn}
    asyncio.get_running_loop().create_task(leftovers[what]())
    await asyncio.sleep(0)
    return "left"


@task()
async def awaits(seconds: float) -> str:
    """Sleep *seconds* on the event loop."""
    await asyncio.sleep(seconds)
    return "awaited"


@task()
def closes_the_event_loop() -> str:
    """The legacy idiom: run a coroutine on ``get_event_loop()``, then close that loop."""
    loop = asyncio.new_event_loop() if sys.version_info >= (3, 14) else asyncio.get_event_loop()
    result = loop.run_until_complete(asyncio.sleep(0, "ran"))
    loop.close()
    return result


@task()
def changes_signals() -> None:
    """Ignore, block and alarm: every signal state the worker relies on, changed."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGRTMIN + 4, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGRTMIN + 2, signal.SIGUSR1})
    signal.alarm(1)


@task()
def changes_process_signals() -> None:
    """What libraries do to the signals the worker does not reserve, but relies on."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # "no zombies": wait() then finds no child
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # a write to a closed pipe then kills
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # as does a write past RLIMIT_FSIZE
    signal.signal(signal.SIGINT, signal.default_int_handler)


@task()
def process_signal_effects() -> dict[str, Any]:
    """What the next task sees of them: a child's exit status, a write to a closed pipe."""
    status = subprocess.run(["false"], check=False).returncode
    reading, writing = os.pipe()
    os.close(reading)
    try:
        os.write(writing, b"x")
        wrote = "wrote"
    except BrokenPipeError:
        wrote = "EPIPE"
    finally:
        os.close(writing)
    return {"false": status, "closed pipe": wrote, "SIGINT": signal.getsignal(signal.SIGINT).name}


@task()
def signal_state() -> dict[str, Any]:
    """What the signals the worker reserves look like now, and whether an alarm is due."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    numbers = (signal.SIGTERM, signal.SIGUSR1, *range(signal.SIGRTMIN, signal.SIGRTMIN + 11))
    ignored = [int(n) for n in numbers if signal.getsignal(n) in (signal.SIG_IGN, signal.SIG_DFL)]
    return {
        "blocked": sorted(int(n) for n in blocked),
        "ignored": ignored,
        "alarm": signal.getitimer(signal.ITIMER_REAL)[0],
    }


@task()
def moves_out(folder: str) -> None:
    """Work in *folder*, removed meanwhile, with a umask that lets no one read a new file."""
    os.chdir(folder)
    os.rmdir(folder)
    os.umask(0o777)


@task()
def where_it_works(path: str) -> dict[str, str]:
    """The working directory, and the permissions of a new file made at *path*."""
    with open(path, "w"):
        pass
    return {"cwd": os.getcwd(), "mode": oct(os.stat(path).st_mode & 0o777)}


def _broken(*args: Any, **kwargs: Any) -> Any:
    raise OSError("patched by a task")


@task()
def patches_os() -> None:
    """Leave ``os.read``, ``os.write``, ``os.fstat`` and ``time.sleep`` patched, as a mock
    started and never stopped, or a green-thread library's patching, would."""
    os.read = os.write = os.fstat = time.sleep = _broken


@task()
def sleeps(seconds: float) -> str:
    """Sleep *seconds*."""
    time.sleep(seconds)
    return "slept"


@task()
def forks_and_returns(path: str) -> int:
    """Fork; the child returns from the task as the parent does, recording its pid first."""
    pid = os.fork()
    if pid == 0:
        with open(path, "a", encoding="utf-8") as record:
            record.write(f"{os.getpid()}\n")
    return pid


@task()
def forks_and_exits(code: int | None) -> int:
    """Fork; the child prints, then ends with ``sys.exit(code)``; return its exit status."""
    pid = os.fork()
    if pid == 0:
        print("CHILD SAYS BYE")  # left in the buffer: flushed as it exits
        sys.exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise SystemExit(9)


class _Unrepresentable:
    def __repr__(self) -> str:
        raise SystemExit(4)

    __str__ = __repr__


@task()
def raises_unprintable() -> None:
    """Raise an exception whose ``__str__`` raises ``SystemExit``."""
    raise _Unprintable


@task()
def raises_with_a_bad_note() -> None:
    """Raise an exception with a note whose rendering raises ``SystemExit``."""
    error = ValueError("noted")
    error.__notes__ = [_Unrepresentable()]  # type: ignore[list-item]
    raise error


class _ExitingNotes(list):  # type: ignore[type-arg]
    """Notes that cannot be iterated: reading them raises ``SystemExit``."""

    def __iter__(self) -> Any:
        raise SystemExit(4)


@task()
def raises_with_notes_that_exit() -> None:
    """Raise an exception whose notes raise ``SystemExit`` when the traceback reads them."""
    error = RuntimeError("noted")
    error.__notes__ = _ExitingNotes(["a note"])  # type: ignore[attr-defined]
    raise error


@task()
def returns_unrepresentable() -> object:
    """Return what JSON cannot hold, keyed by an object whose ``repr`` raises ``SystemExit``."""
    return {_Unrepresentable(): 1}


class SignallingHooks(BaseWorker):
    """Worker hooks whose ``on_start`` leaves an alarm pending and ignores SIGCHLD."""

    def on_start(self) -> None:
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the worker's choice: kept as it is
        signal.alarm(1)


_setting: ContextVar[str] = ContextVar("leaky_setting", default="unset")
_open_blocks: list[Any] = []


@task()
def sets_context_variables() -> None:
    """Set a context variable, and leave a publisher's ``batch()`` block open (never ended),
    as a cancel landing just as a block began could: every later submission would join it."""
    _setting.set("set by an earlier task")
    block = batch()
    block.__enter__()
    _open_blocks.append(block)  # (kept: were it freed, its batch would be passed over)


def _context_variables() -> str:
    held = current_batch.get()
    return f"setting={_setting.get()} open batch={held is not None and held.usable}"


@task()
def reads_context_variables() -> str:
    """What this task sees of the context variables the earlier ones set."""
    return _context_variables()


@task()
async def reads_context_variables_async() -> str:
    """:func:`reads_context_variables`, as an ``async def`` task."""
    return _context_variables()

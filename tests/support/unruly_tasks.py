"""Tasks that end in ways a task should not: raising what is not an ``Exception``, or handing
back a generator whose body never runs. Each leaves evidence before it misbehaves."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import gc
import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from dispatcher.publish import task
from dispatcher.server.log_background import BackgroundStream


def _record(path: str, **fields: Any) -> None:
    line = json.dumps({"pid": os.getpid(), "time": time.time(), **fields}) + "\n"
    with open(path, "a", encoding="utf-8") as evidence:
        evidence.write(line)


class Unruly(BaseException):
    """A ``BaseException`` of the task's own."""


RAISED: dict[str, type[BaseException]] = {
    "SystemExit": SystemExit,
    "KeyboardInterrupt": KeyboardInterrupt,
    "GeneratorExit": GeneratorExit,
    "Unruly": Unruly,
}


@task()
def raise_base(path: str, kind: str, text: str) -> None:
    """Record, then raise the ``BaseException`` named *kind* saying *text*."""
    _record(path, event="raise", kind=kind)
    raise RAISED[kind](text)


@task()
async def async_raise_base(path: str, kind: str, text: str) -> None:
    """:func:`raise_base` as an ``async def`` task."""
    _record(path, event="raise", kind=kind, run="async")
    raise RAISED[kind](text)


@task()
def returns_generator(path: str) -> Iterator[int]:
    """Record, then return a generator (its body never runs)."""
    _record(path, event="returns_generator")

    def numbers() -> Iterator[int]:
        _record(path, event="generator body ran")
        yield 1

    return numbers()


@task()
def returns_async_generator(path: str) -> AsyncIterator[int]:
    """Record, then return an async generator (its body never runs)."""
    _record(path, event="returns_async_generator")

    async def numbers() -> AsyncIterator[int]:
        _record(path, event="async generator body ran")
        yield 1

    return numbers()


def _logged(function: Callable[..., Any]) -> Callable[..., Any]:
    """A decorator that hides what *function* is (a generator function, here)."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return function(*args, **kwargs)

    return wrapper


@task()
@_logged
def wrapped_generator(path: str) -> Iterator[int]:
    """A generator function behind a decorator: ``@task`` cannot tell what it is."""
    _record(path, event="generator body ran")
    yield 1


_WRITTEN_ON_THE_EVENT_PIPE = {
    "garbage": b'{"garbage": \n\xff\xfe not json\n' * 10,
    "endless": b"x" * (64 << 20),  # a line that never ends: the service must not wait for it
    "done": b'{"event":"done","uuid":"zzz","outcome":"ok","started":0,"finished":0}\n',
    # Then the end of its own job (uuid u-forger), in the same write: too late to be trusted.
    "done_twice": b'{"event":"done","uuid":"zzz","outcome":"ok","started":0,"finished":0}\n'
    b'{"event":"done","uuid":"u-forger","outcome":"ok","started":0,"finished":0}\n',
}


@task()
def writes_on_the_event_pipe(path: str, kind: str = "garbage") -> None:
    """Record, then write what is no event on the worker's socket to the service."""
    _record(path, event="garbling")
    for candidate in gc.get_objects():
        if isinstance(candidate, socket.socket) and candidate.family == socket.AF_UNIX:
            with contextlib.suppress(OSError):  # the service may stop this worker meanwhile
                candidate.sendall(_WRITTEN_ON_THE_EVENT_PIPE[kind])
    time.sleep(5)  # the service stops this worker meanwhile


@task()
def raises_a_huge_error(path: str, size: int) -> None:
    """Record, then raise an exception whose message is *size* characters long."""
    _record(path, event="raising")
    raise ValueError("e" * size)


_KEPT: list[Any] = []


def _capture_pipe_reader() -> int:
    """The descriptor that reads the pipe fd 1 writes to."""
    pipe = os.readlink("/proc/self/fd/1")
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        with contextlib.suppress(OSError):
            reads = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
            if reads and os.readlink(f"/proc/self/fd/{fd}") == pipe:
                return fd
    raise LookupError("no reader of fd 1's pipe")


@task()
def takes_a_worker_fd(path: str, how: str) -> None:
    """Record, then close a file descriptor of the worker's own (as a double close of a
    number since reused would): the one its log goes to, or with *how* ``pipe`` the one
    that reads its output, ``socket`` its socket to the service. With *how* ``reuses``, put the file *path*.taken in the log's
    place, kept open. Then log and print: lines the worker would write to its log."""
    _record(path, event="taking")
    if how == "pipe":
        os.close(_capture_pipe_reader())
    if how == "socket":  # the worker's line to its service
        for candidate in gc.get_objects():
            if isinstance(candidate, socket.socket) and candidate.family == socket.AF_UNIX:
                os.close(candidate.fileno())
    for candidate in gc.get_objects():
        if how in ("closes", "reuses") and isinstance(candidate, BackgroundStream):
            fd = candidate.fileno()
            os.close(fd)
            if how == "reuses":
                taken = open(path + ".taken", "w")  # noqa: SIM115 (kept open)
                _KEPT.append(taken)
                os.dup2(taken.fileno(), fd)
    logging.getLogger("unruly").warning("LOGGED BY THE TASK")
    with contextlib.suppress(BrokenPipeError):  # (the pipe without its reader)
        print("PRINTED BY THE TASK", flush=True)


@task(bind=True)
def asks_too_much(dispatcher: Any, path: str, megabytes: int) -> None:
    """Send its service a control command with *megabytes* MiB of data; record the reply."""
    reply = dispatcher.control("running", {"task": "x" * (megabytes << 20)})
    _record(path, event="asked", reply=reply)

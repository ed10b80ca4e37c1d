"""Tasks that end in ways a task should not: raising what is not an ``Exception``, or handing
back a generator whose body never runs. Each leaves evidence before it misbehaves."""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from dispatcher.publish import task


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

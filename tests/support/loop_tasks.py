"""Tasks that use the event loop of their worker, or one of their own, in ways that outlive them.

A thread ``asyncio.to_thread()`` started still running when the task ends, an object bound
to the worker's event loop kept in a global, ``asyncio.run()`` in a plain task, trio run
inside a task, an async generator dropped unfinished, the loop's settings changed. Each records what it saw in a file
(*path*), so a test reads it whatever the task's outcome.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator
from pathlib import Path

from dispatcher.publish import task


def _record(path: str, line: str) -> None:
    with Path(path).open("a", encoding="utf-8") as record:
        record.write(line + "\n")


@task()
async def exits_with_a_thread_running(path: str, seconds: float, how: str) -> None:
    """Start a thread of *seconds* (``to_thread``), then raise *how* while it runs."""
    asyncio.get_running_loop().create_task(asyncio.to_thread(time.sleep, seconds))
    await asyncio.sleep(0.05)
    _record(path, "raising")
    raise {"SystemExit": SystemExit(4), "KeyboardInterrupt": KeyboardInterrupt()}[how]


@task()
async def awaits_a_thread(path: str, seconds: float) -> None:
    """Await a thread of *seconds* (``to_thread``); say when it started and when cancelled."""
    waiting = asyncio.to_thread(time.sleep, seconds)
    _record(path, "started")
    try:
        await waiting
    finally:
        _record(path, "finally")


@task()
async def sleeps_async(path: str, seconds: float) -> None:
    """Await ``asyncio.sleep(seconds)``, saying when it started."""
    _record(path, "started")
    await asyncio.sleep(seconds)


_QUEUE: list[asyncio.Queue[int]] = []


@task()
async def waits_on_a_global_queue() -> str:
    """Wait on an ``asyncio.Queue`` kept in a global: bound to the loop of its first wait."""
    if not _QUEUE:
        _QUEUE.append(asyncio.Queue())
    queue = _QUEUE[0]
    asyncio.get_running_loop().call_later(0.01, queue.put_nowait, 1)
    await queue.get()
    return "got"


@task()
def runs_asyncio_run() -> int:
    """A plain task running a coroutine with ``asyncio.run()``."""
    return asyncio.run(asyncio.sleep(0, 42))


@task()
def runs_on_get_event_loop() -> int:
    """The legacy idiom: ``asyncio.get_event_loop().run_until_complete()``, loop kept open."""
    return asyncio.get_event_loop().run_until_complete(asyncio.sleep(0, 42))


@task()
def runs_trio(path: str) -> None:
    """Run trio (``trio.run()``) until cancelled, recording its ``finally``."""
    import trio

    async def main() -> None:
        _record(path, "started")
        try:
            await trio.sleep(30)
        finally:
            _record(path, "trio finally")

    trio.run(main)


@task()
async def runs_trio_async(path: str) -> None:
    """:func:`runs_trio` from an ``async def`` task."""
    runs_trio(path)


@task()
async def fails_in_gather() -> None:
    """Fail through ``asyncio.gather()``."""

    async def fails(number: int) -> None:
        await asyncio.sleep(0)
        raise ValueError(f"child {number}")

    await asyncio.gather(fails(1), fails(2))


@task()
async def interrupted_in_gather() -> None:
    """Fail through ``asyncio.gather()`` with ``KeyboardInterrupt``, which the loop lets
    through: the other child is left pending."""

    async def interrupts() -> None:
        await asyncio.sleep(0)
        raise KeyboardInterrupt

    await asyncio.gather(interrupts(), asyncio.sleep(0.2))


@task()
async def drops_an_async_generator(path: str) -> None:
    """Leave an async generator unfinished, its ``finally`` awaiting."""

    async def numbers() -> AsyncIterator[int]:
        try:
            for number in range(10):
                yield number
        finally:
            _record(path, "finally starts")
            await asyncio.sleep(0.01)
            _record(path, "finally ends")

    async for number in numbers():
        if number == 2:
            break
    _record(path, "returned")


@task()
def collects_garbage() -> None:
    """Collect garbage: what a task left for the collector is freed now."""
    gc.collect()


@task()
async def collects_garbage_async() -> None:
    """:func:`collects_garbage`, as an ``async def`` task."""
    gc.collect()


_KEPT: list[AsyncIterator[int]] = []
"""Async generators tasks keep past their end (a stream, a cursor)."""


@task()
async def keeps_an_async_generator(path: str) -> None:
    """Keep an async generator started (``__anext__()``) in a global; its ``finally`` awaits."""

    async def numbers() -> AsyncIterator[int]:
        try:
            for number in range(10):
                yield number
        finally:
            await asyncio.sleep(0.01)
            _record(path, "finally")

    kept = numbers()
    await kept.__anext__()
    _KEPT.append(kept)
    _record(path, "kept")


def _refuses(*args: object, **kwargs: object) -> object:
    raise RuntimeError("set by an earlier task")


@task()
async def changes_the_loop() -> None:
    """Set the loop's task factory and exception handler (both failing), and its debug mode."""
    loop = asyncio.get_running_loop()
    loop.set_task_factory(_refuses)  # type: ignore[arg-type]
    loop.set_exception_handler(_refuses)
    loop.set_debug(True)
    loop.slow_callback_duration = 0.0


@task()
async def the_loop_as_it_is() -> list[object]:
    """Start an asyncio task; say whether the loop is in debug mode, and how it handles errors."""
    loop = asyncio.get_running_loop()
    await loop.create_task(asyncio.sleep(0))
    return [loop.get_debug(), loop.get_exception_handler(), loop.slow_callback_duration]

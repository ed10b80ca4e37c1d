"""Helpers for the async tests that sync tests are generated from.

An async test calls a helper whose name starts with ``a``; the generator
(``tools/async_to_sync.py``) renames the call in the sync test to the helper of the same name
without the ``a``, which does the same with threads instead of tasks, or nothing at all.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import psycopg

T = TypeVar("T")


async def agather(*workers: Callable[[], Awaitable[object]]) -> None:
    """Run *workers* at the same time, as tasks of the running event loop."""
    await asyncio.gather(*(worker() for worker in workers))


def gather(*workers: Callable[[], object]) -> None:
    """Run *workers* at the same time, each in a thread of its own; re-raise a failure."""
    with ThreadPoolExecutor(len(workers)) as pool:
        for future in [pool.submit(worker) for worker in workers]:
            future.result()


def ablock_on(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run *coroutine* in an event loop of its own, for code outside any (a forked child)."""
    return asyncio.run(coroutine)


def block_on(value: T) -> T:
    """Return *value*: in sync code, the call :func:`ablock_on` would run has already run."""
    return value


@contextlib.contextmanager
def connection_of_the_other_kind(dsn: str, kind: type[object]) -> Iterator[object]:
    """Open a connection an API taking *kind* must refuse: sync for async, and vice versa."""
    if kind is psycopg.AsyncConnection:
        with psycopg.connect(dsn) as conn:
            yield conn
        return
    loop = asyncio.new_event_loop()
    try:
        other = loop.run_until_complete(psycopg.AsyncConnection.connect(dsn))
        try:
            yield other
        finally:
            loop.run_until_complete(other.close())
    finally:
        loop.close()

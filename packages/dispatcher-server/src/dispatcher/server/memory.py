"""``worker.max_memory``: workers whose resident memory passes the limit are stopped."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Final

import anyio

from dispatcher.schema import Outcome
from dispatcher.server.log_arguments import Phrase
from dispatcher.server.log_records import get_logger
from dispatcher.server.workers import WorkerHandle

logger = get_logger("dispatcher.memory")

CHECK_INTERVAL: Final = 0.1
"""Seconds between two looks at the workers' memory."""

_PAGE_SIZE: Final = os.sysconf("SC_PAGE_SIZE")


def resident_bytes(pid: int | None) -> int | None:
    """The resident memory of process *pid* in bytes, or ``None`` if it cannot be read."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            resident_pages = int(statm.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return resident_pages * _PAGE_SIZE


def check(workers: Iterable[WorkerHandle], limit: int) -> None:
    """Stop every live worker above *limit* bytes; its task ends as ``memory_exceeded``.

    A worker running a task is killed (SIGKILL) at once. One without a task gets SIGTERM
    first, SIGKILL only :data:`~dispatcher.server.cancel_escalation.KILL_AFTER_TERM`
    seconds later: it may still be logging what its last task wrote (which it does once it
    has reported the task's end), and its SIGTERM handler writes that before it ends.
    """
    for worker in workers:
        if not worker.is_live or worker.killed_for is not None:
            continue
        rss = resident_bytes(worker.pid)
        if rss is None or rss <= limit:
            continue
        job = worker.job
        logger.warning(
            "worker %d (pid %s) uses %d MiB, over worker.max_memory (%d MiB): %s",
            worker.id,
            worker.pid,
            rss >> 20,
            limit >> 20,
            Phrase("stopping it")
            if job is None
            else Phrase("killing it and its task %s (uuid %s)", job.task, job.uuid),
        )
        if job is None:
            worker.terminate_then_kill()
        else:
            worker.kill(Outcome.MEMORY_EXCEEDED)


async def watch(workers: Callable[[], Iterable[WorkerHandle]], limit: int) -> None:
    """Check the workers every :data:`CHECK_INTERVAL` seconds, until cancelled."""
    while True:
        await anyio.sleep(CHECK_INTERVAL)
        check(list(workers()), limit)

"""Walks over the jobs a control command looks at, sharing the event loop as they go.

``running`` and ``cancel`` may look at every job the service holds (a backlog of a
million): the jobs a filter lets through are found, listed and, for a cancel, settled a
turn of the event loop at a time (:mod:`~dispatcher.server.walk_turns`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from itertools import compress
from typing import Final

import anyio

from dispatcher.server.control_shapes import Listing, TaskFilter
from dispatcher.server.control_target import ControlTarget
from dispatcher.server.jobs import Job, JobPick, Snapshot, describe
from dispatcher.server.walk_turns import Turns

WALK_SLICE: Final = 1000
"""Jobs a walk compares by uuid and task name in one go (without a Python call for each),
before it looks at the clock: it lets the service go on (dispatch, timers, lease renewals,
control replies) every :data:`~dispatcher.server.walk_turns.WALK_TURN` s of walking."""


async def every_job(snapshot: Snapshot) -> AsyncGenerator[tuple[str, Job], None]:
    """Each job of *snapshot*, where it was."""
    for where, jobs in snapshot.places:
        for job in jobs:
            yield where, job


async def matching_jobs(
    snapshot: Snapshot, wanted: TaskFilter, turns: Turns
) -> AsyncGenerator[tuple[str, Job], None]:
    """The jobs of *snapshot* that *wanted* lets through, where each was.

    The event loop runs at each of *turns* (which its caller may share). A filter on the
    uuid or the task name looks at the jobs without a Python call for each; one on ``args``
    or ``kwargs`` reads each message (among those with the uuid and the task name).
    """
    pick = JobPick(wanted.uuid, wanted.task)
    for where, jobs in snapshot.places:
        for start in range(0, len(jobs), WALK_SLICE):
            part = jobs[start : start + WALK_SLICE]
            for job in compress(part, pick.flags(part)):
                if not wanted.needs_message or wanted.matches(describe(job, where)):
                    yield where, job
                if turns.due():
                    await turns.pause()
            if turns.due():
                await turns.pause()


async def list_found(
    listing: Listing,
    found: AsyncGenerator[tuple[str, Job], None],
    turns: Turns,
    *,
    count_rest: bool = True,
) -> None:
    """List the jobs *found* in *listing*, the event loop running at each of *turns*.

    *turns* is the clock of the walk that finds them, if it has one: one clock for both.

    Once the listing is full, the others are only counted; without *count_rest*, the walk
    stops there (the caller counts them otherwise).
    """
    async with contextlib.aclosing(found):
        async for where, job in found:
            if listing.full:
                if not count_rest:
                    return
                listing.omitted += 1
                continue
            listing.add_job(where, job)
            if turns.due():
                await turns.pause()


async def settle_taken(
    target: ControlTarget,
    taken: list[tuple[str, list[Job]]],
    listing: Listing,
    stopping: anyio.Event,
) -> None:
    """Count and settle the jobs a cancel *taken*, and list them, a turn at a time.

    Once *stopping* is set, the rest at once. Those left if this fails are settled at once
    too (they are no longer anywhere else).
    """
    left = ((where, job) for where, jobs in taken for job in jobs)
    turns = Turns(stopping)
    try:
        for where, job in left:
            target.cancelled(where, job)
            listing.add_job(where, job)
            if turns.due() and not stopping.is_set():
                await turns.pause()
    finally:
        for where, job in left:
            target.cancelled(where, job)

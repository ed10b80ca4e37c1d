"""The queue of jobs waiting for a worker: a FIFO lane per source, taking turns.

The queue is fair between the sources of its jobs: each source (a broker's channel or
queue, a socket connection; for a job made inside the service, its task: one lane per
scheduled producer) has a lane of its own, FIFO, and the lanes that hold jobs take turns
(round-robin) to give the next job to a worker. A flood on one channel does not hold up
another channel, a durable queue or a schedule: their next job starts within one turn of
each lane. Jobs a worker gave back unstarted come before every lane, in the order given.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Final

from dispatcher.server.jobs import Job, JobPick

LANES_KEPT: Final = 64
"""Lanes kept, empty, for sources that may send again, before empty ones are dropped (each
socket connection has its own lane: they come and go)."""


class Lanes:
    """The queue: jobs in their sources' lanes, and jobs given back, first."""

    def __init__(self) -> None:
        self._lanes: dict[str | None, dict[str, deque[Job]]] = {}
        """The lanes of the queue, by broker then source (:func:`source`), FIFO each; kept
        when empty (up to about :data:`LANES_KEPT`), so that a busy source makes no new one."""
        self._turns: deque[deque[Job]] = deque()
        """The lanes that hold jobs, in the order of their turns: the first gives the next
        job, then goes last. A lane is in it exactly when it is not empty."""
        self._lane_count = 0
        self._prune_at = LANES_KEPT
        self._returned: deque[Job] = deque()
        """Jobs given back unstarted (:meth:`give_back`): taken before every lane, in the
        order they were given back, so that they keep the order they were sent in."""
        self.count = 0
        """Jobs in the queue: in the lanes and given back (changed by this object only)."""

    def add(self, job: Job) -> None:
        """Put *job* last in the lane of its source."""
        lanes = self._lanes.get(job.broker)
        if lanes is None:
            lanes = self._lanes[job.broker] = {}
        key = job.task if job.channel is None else job.channel  # source(job), inlined
        lane = lanes.get(key)
        if lane is None:
            lane = self._new_lane(lanes, key)
        if not lane:
            self._turns.append(lane)
        lane.append(job)
        self.count += 1

    def _new_lane(self, lanes: dict[str, deque[Job]], key: str) -> deque[Job]:
        if self._lane_count >= self._prune_at:
            for by_source in self._lanes.values():
                for empty in [name for name, lane in by_source.items() if not lane]:
                    del by_source[empty]
            self._lane_count = sum(map(len, self._lanes.values()))
            # Pruned again only once as many more were made: a few jobs' cost each at most.
            self._prune_at = max(LANES_KEPT, 2 * self._lane_count)
        lane = lanes[key] = deque()
        self._lane_count += 1
        return lane

    def give_back(self, jobs: list[Job]) -> None:
        """Put *jobs*, given back unstarted, first: after those given back before them."""
        self._returned.extend(jobs)
        self.count += len(jobs)

    def peek(self) -> Job:
        """The job :meth:`take` would take (the queue is not empty)."""
        return self._returned[0] if self._returned else self._turns[0][0]

    def take(self) -> Job:
        """The next job of the queue, taken out of it.

        One given back, else the first of the lane whose turn it is (which then goes last,
        or out of the turns once empty).
        """
        self.count -= 1
        if self._returned:
            return self._returned.popleft()
        turns = self._turns
        lane = turns[0]
        job = lane.popleft()
        if not lane:
            turns.popleft()
        elif len(turns) > 1:
            turns.rotate(-1)
        return job

    def take_picked(self, pick: JobPick) -> list[Job]:
        """Take the jobs *pick* names out of the queue; return them (each lane's in order).

        Told apart without a Python call for each (see :meth:`JobPick.flags`).
        """
        queued: list[Job] = []
        for lane in (self._returned, *self._turns):
            taken, kept = pick.split(lane)
            if taken:
                queued += taken
                lane.clear()
                lane.extend(kept)
        if queued:
            self._turns = deque(lane for lane in self._turns if lane)
            self.count -= len(queued)
        return queued

    def in_order(self) -> Iterator[Job]:
        """The jobs of the queue, in the order they would be taken (walked lazily).

        Each job costs the same, however many lanes and however uneven: a lane that runs
        out leaves the turns, and the last one left is walked through at once.
        """
        yield from self._returned
        turns = deque(map(iter, self._turns))
        while len(turns) > 1:
            job = next(turns[0], None)
            if job is None:
                turns.popleft()
            else:
                yield job
                turns.rotate(-1)
        if turns:
            yield from turns[0]

    def count_from(self, broker: str | None) -> int:
        """Jobs that *broker* delivered in the queue (``None``: made inside)."""
        lanes = self._lanes.get(broker)
        count = 0 if lanes is None else sum(map(len, lanes.values()))
        if self._returned:
            count += sum(1 for job in self._returned if job.broker == broker)
        return count

    def clear(self) -> None:
        """Empty the queue (its lanes are kept)."""
        for lanes in self._lanes.values():
            for lane in lanes.values():
                lane.clear()
        self._turns.clear()
        self._returned.clear()
        self.count = 0


def source(job: Job) -> str:
    """The source of *job* within its broker, which has a lane of its own in the queue.

    Its channel or queue (a socket connection); for a job made inside the service (a
    producer's, the ``run`` command's), its task: each schedule has its own lane.
    """
    return job.task if job.channel is None else job.channel

"""A job: one validated task message on its way to, or on, a worker."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import compress, repeat
from operator import and_, attrgetter, not_
from typing import Any, NamedTuple

from dispatcher.schema.log_fields import ATTEMPT, BROKER, EVENT, QUEUE, TASK, UUID
from dispatcher.server.log_arguments import Phrase


class Job(NamedTuple):
    """A validated task message waiting for, or running on, a worker.

    A tuple of strings and bytes, so that a long queue of them costs the garbage collector
    nothing (it stops tracking such tuples).
    """

    uuid: str
    task: str
    line: bytes
    """The request line for a worker (the message's JSON text, as received)."""
    timeout: float = 0
    """Seconds the task may run (``0``: no limit)."""
    delay: float = 0
    """Seconds to hold the job before it is dispatched."""
    on_duplicate: str | None = None
    key: str | None = None
    """Identity for ``on_duplicate`` (task, args, kwargs); ``None`` when not tracked."""
    published: float = 0
    """``time_pub`` of the message (publisher's clock), ``0`` when unknown."""
    broker: str | None = None
    """The broker that delivered it, when that broker must hear how it ended."""
    receipt: str | None = None
    """The delivery's receipt, for that broker's acknowledgement (see ``settlement``)."""
    channel: str | None = None
    """The channel or queue it came on (``None`` for a job made inside the service)."""
    attempt: int = 0
    """Which attempt of a durable job this delivery is (``1`` first); ``0`` when its broker
    does not count attempts."""

    def matches(self, uuid: str | None, task: str | None) -> bool:
        """Tell whether the job has this uuid and task name (``None`` matches any)."""
        return (uuid is None or self.uuid == uuid) and (task is None or self.task == task)


def job_fields(event: str, job: Job) -> dict[str, Any]:
    """The attributes of a log record about *job* (``extra=``).

    *event*, its task, uuid, broker, channel or queue, and its attempt when its broker
    counts them.
    """
    fields: dict[str, Any] = {
        EVENT: event,
        TASK: job.task,
        UUID: job.uuid,
        BROKER: job.broker,
        QUEUE: job.channel,
    }
    if job.attempt:
        fields[ATTEMPT] = job.attempt
    return fields


def listed(jobs: list[Job], shown: int = 20) -> Phrase:
    """The first *shown* of *jobs* for a log line, ``task (uuid u)`` each, and how many more."""
    named = (Phrase("%s (uuid %s)", job.task, job.uuid) for job in jobs[:shown])
    return Phrase.joined(", ", named, more=len(jobs) - shown)


def describe(job: Job, where: str) -> dict[str, Any]:
    """A job as control replies show it: where it is, its uuid, task and message.

    The message has the ``channel`` it came on, as dispatcherd's replies show it.
    """
    message = json.loads(job.line)["message"]
    if job.channel is not None:
        message["channel"] = job.channel
    return {"where": where, "uuid": job.uuid, "task": job.task, "message": message}


_UUID = attrgetter("uuid")
_TASK = attrgetter("task")


@dataclass(frozen=True)
class JobPick:
    """Which jobs a cancel takes: by ``uuid`` and/or ``task`` name, or by any of ``uuids``.

    With none of them, every job. :meth:`flags` tells many jobs apart without a Python
    call for each (a backlog may hold a million).
    """

    uuid: str | None = None
    task: str | None = None
    uuids: frozenset[str] | None = None

    def __call__(self, job: Job) -> bool:
        """Tell whether *job* is one to take."""
        if self.uuids is not None and job.uuid not in self.uuids:
            return False
        return job.matches(self.uuid, self.task)

    def flags(self, jobs: Collection[Job]) -> Iterable[bool]:
        """Whether each of *jobs* is one to take, in order (*jobs* is read once per key)."""
        tests = []
        if self.uuids is not None:
            tests.append(map(self.uuids.__contains__, map(_UUID, jobs)))
        if self.uuid is not None:
            tests.append(map(self.uuid.__eq__, map(_UUID, jobs)))
        if self.task is not None:
            tests.append(map(self.task.__eq__, map(_TASK, jobs)))
        if not tests:
            return repeat(True, len(jobs))
        found = tests[0]
        for test in tests[1:]:
            found = map(and_, found, test)
        return found

    def split(self, jobs: Sequence[Job]) -> tuple[list[Job], list[Job]]:
        """*jobs* as those to take and the others, each in order."""
        flags = list(self.flags(jobs))
        taken = list(compress(jobs, flags))
        if not taken:
            return [], list(jobs)
        return taken, list(compress(jobs, map(not_, flags)))


@dataclass
class Snapshot:
    """Where the jobs held were at one moment: lists, safe to walk while the event loop runs.

    ``places`` lists each holding place with its jobs, in the order ``running`` lists them
    (each worker's job and those it holds ahead, then ``queued``, ``blocked``,
    ``delayed``). A place taken with a limit holds only its first jobs: ``total`` counts
    them all.
    """

    places: list[tuple[str, Sequence[Job]]] = field(default_factory=list)
    total: int = 0

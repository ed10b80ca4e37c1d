"""Turn a valid task message into the :class:`~dispatcher.server.jobs.Job` the service runs.

The task and its follow-ups must be registered; a message without a uuid gets one; one a
durable broker stored must agree with its row (:mod:`~dispatcher.server.intake_rows`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any, Final

from dispatcher.config import Limits
from dispatcher.schema import duplicate_identity, new_uuid
from dispatcher.server.catalogue import TaskCatalogue
from dispatcher.server.intake_rows import task_agrees_with_row
from dispatcher.server.jobs import Job, job_fields
from dispatcher.server.log_records import get_logger
from dispatcher.server.origin import Origin, StoredRow
from dispatcher.server.protocol import run_line
from dispatcher.server.rejection import Rejected

logger = get_logger("dispatcher.intake")

MAIN_PREFIX: Final = "__main__."
"""How the names of tasks defined in a script run as a program begin."""

MAIN_HINT: Final = (
    " (it was defined in the script that sent it, run as __main__, which no service imports: "
    "define it in a module of tasks.modules and import it from there)"
)
"""What the rejection of a ``__main__`` task adds: the publisher warned of it too."""

STORED_HINT: Final = (
    "; the job is failed, not retried: if services of another release register the task"
    " (during a rolling deploy), run "
)
"""What the rejection of a stored job adds, before the command that queues it again."""


class JobMaker:
    """Makes the jobs of task messages whose task names the *catalogue* knows."""

    def __init__(self, catalogue: TaskCatalogue, limits: Limits) -> None:
        self._catalogue = catalogue
        self._limits = limits

    def make(self, message: dict[str, Any], payload: str, channel: str, origin: Origin) -> Job:
        """The job of *message* (valid), whose text is *payload*, received on *channel*.

        :raises Rejected: when its task or a follow-up is not registered, it disagrees with
            its row, or it is too large to hold.
        """
        name = message["task"]
        names = self._catalogue.names
        assert names is not None
        if name not in names:
            raise self._not_registered(name, "", message, origin)
        if "callbacks" in message or "errbacks" in message:
            for where, follow_up in _follow_ups(message):
                if follow_up not in names:
                    raise self._not_registered(follow_up, f"{where}: ", message, origin)
        if origin.stored_as is not None:
            payload = _agree_with_row(message, payload, origin.stored_as)
        uuid = message.get("uuid")
        if uuid is None:
            # Random, not counted: a counter's values repeat across restarts and services,
            # so a cancel by one such uuid would reach every service's job of that number.
            uuid = message["uuid"] = new_uuid()
            payload = _with_uuid(payload, uuid)
        on_duplicate = message.get("on_duplicate")
        # A broker that schedules its messages (pg_queue) has applied the delay already
        # (run_after) and enforces on_duplicate across hosts (unique indexes): the job is
        # neither held nor gated again here.
        scheduled = origin.scheduled_by_broker
        tracked = on_duplicate is not None and on_duplicate != "parallel" and not scheduled
        line = run_line(payload, channel, keep_result=origin.receipt is not None)
        if len(line) > self._limits.max_held_bytes:  # never takeable: refusing it would loop
            raise Rejected(
                "oversized",
                f"the message is {len(payload)} bytes, more than service.limits.max_held_bytes "
                f"({self._limits.max_held_bytes}) lets this service hold",
                uuid,
            )
        job = Job(
            uuid=uuid,
            task=name,
            line=line,
            timeout=_timeout(message, self._catalogue),
            delay=0 if scheduled else message.get("delay") or 0,
            on_duplicate=on_duplicate,
            key=duplicate_identity(message) if tracked else None,
            published=message.get("time_pub") or 0,
            broker=origin.broker,
            receipt=origin.receipt,
            channel=None if origin.broker is None else channel,
            attempt=origin.attempt,
        )
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "received task %s (uuid %s) on %s (%s)",
                name,
                uuid,
                channel,
                origin.broker or "made inside the service",
                extra=job_fields("task_received", job),
            )
        return job

    def _not_registered(
        self, name: str, where: str, message: Mapping[str, Any], origin: Origin
    ) -> Rejected:
        """The rejection of *message*, whose task (or follow-up, *where*) *name* is unknown.

        A stored job is failed for good by it, while services of another release may know
        the task (a rolling deploy, a release that adds a task): its reason says how to
        run the job again once they all do.
        """
        uuid = message.get("uuid")
        if origin.stored_as is None:
            reason = f"{where}task {name!r} is not registered{self._suggestion(name)}"
            return Rejected("unknown_task", reason, uuid)
        again = f"--uuid {uuid}" if isinstance(uuid, str) and uuid else "--failed"
        reason = (
            f"{where}task {name!r} is not registered in this service{self._suggestion(name)}"
            f"{STORED_HINT}'dispatcherctl retry {again}' once every service does"
        )
        return Rejected("unknown_task", reason, uuid)

    def _suggestion(self, name: str) -> str:
        """``" (did you mean 'x'?)"`` when a registered name is close to *name*, else ``""``.

        Not always: see :meth:`TaskCatalogue.close_name`. A task of ``__main__`` gets what
        to do instead: no service imports the script that defined it.
        """
        if name.startswith(MAIN_PREFIX):
            return MAIN_HINT
        close = self._catalogue.close_name(name)
        return f" (did you mean {close!r}?)" if close is not None else ""


def _agree_with_row(message: dict[str, Any], payload: str, stored_as: StoredRow) -> str:
    """*payload*, checked against the columns its row was stored under.

    A message without a uuid takes the row's. Listings, ``get_job()`` and a cancel by
    uuid go by the row's columns: a message naming another uuid or task (a row written
    by hand) would run as something they cannot find. The table applies the delay and
    on_duplicate: a message asking for either where its row does not would run early,
    or beside its twin, silently.

    :raises Rejected: when the message names another uuid or task than its row, or asks
        for a delay or an on_duplicate its row does not hold.
    """
    uuid = stored_as.uuid
    if message.get("uuid") is None:
        message["uuid"] = uuid
        payload = _with_uuid(payload, uuid)
    task_agrees_with_row(message, stored_as)
    return payload


def _timeout(message: dict[str, Any], catalogue: TaskCatalogue) -> float:
    """The seconds *message* may run: its own ``timeout``, else its task's ``@task(timeout=)``.

    A message published by name (SQL, another language, ``dispatcherctl submit``, a
    publisher without the task's module) says none: the task's own still holds.
    """
    timeout = message.get("timeout")
    if timeout is None:
        return catalogue.timeouts.get(message["task"], 0)
    return timeout or 0


def _follow_ups(message: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """``(where, task name)`` of each of the ``callbacks`` and ``errbacks``, at any depth.

    *message* is valid (see the task-message schema): each is an object with a ``task``.
    """
    for kind in ("errbacks", "callbacks"):
        for index, follow_up in enumerate(message.get(kind) or ()):
            where = f"{prefix}{kind}[{index}]"
            yield where, follow_up["task"]
            yield from _follow_ups(follow_up, f"{where}.")


def _with_uuid(payload: str, uuid: str) -> str:
    """The JSON text *payload* of a task message without ``uuid``, with ``uuid`` first.

    The text is not encoded again: *uuid* (ASCII, nothing to escape) goes in after the
    opening brace, which only whitespace can precede; the message holds ``task``, so a
    comma follows.
    """
    head, brace, rest = payload.partition("{")
    return f'{head}{brace}"uuid":"{uuid}",{rest}'

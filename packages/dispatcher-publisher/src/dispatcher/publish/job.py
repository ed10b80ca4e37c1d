"""A durable job as the queue table holds it: the typed view ``get_job()`` and ``jobs()`` return.

The statements that read it are built here too, for the sync and async readers alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any, Final, Literal, get_args

from dispatcher.publish.pg_text import text_problem
from dispatcher.publish.timestamps import read_datetime, timestamp_sql
from dispatcher.schema import InvalidArgumentType, InvalidArgumentValue, OnDuplicate

JobState = Literal["queued", "running", "done", "failed", "cancelled"]
"""Where a job is: waiting (``queued``, maybe until :attr:`Job.run_after`), claimed by a
service (``running``), or finished: ``done`` (its task returned), ``failed`` (its last
attempt failed and none is left, or it could never run), ``cancelled``."""

JOB_STATES: Final[tuple[JobState, ...]] = get_args(JobState)
"""Every :data:`JobState`, in the order a job goes through them."""

MAX_LISTED: Final = 10_000
"""The most jobs one ``jobs()`` call returns."""

COLUMNS: Final = (
    "id",
    "uuid",
    "queue",
    "task",
    "state",
    "attempts",
    "max_attempts",
    "created_at",
    "run_after",
    "started_at",
    "finished_at",
    "lease_until",
    "node_id",
    "on_duplicate",
    "outcome",
    "last_error",
    "result",
    "message",
    "claims",
    "dup_key",
)
"""The columns read, in the order of :class:`Job`'s fields: every column of the table."""

TIMESTAMP_COLUMNS: Final = frozenset(
    {"created_at", "run_after", "started_at", "finished_at", "lease_until"}
)
"""The columns of :data:`COLUMNS` that are ``timestamptz``: selected by
:func:`~dispatcher.publish.timestamps.timestamp_sql`, whatever the session's ``DateStyle``."""

_SELECTED: Final = ", ".join(
    timestamp_sql(column, column) if column in TIMESTAMP_COLUMNS else column for column in COLUMNS
)
_TIMESTAMP_INDEXES: Final = tuple(i for i, c in enumerate(COLUMNS) if c in TIMESTAMP_COLUMNS)


@dataclass(frozen=True)
class Job:
    """One job of a durable queue (a row of its ``jobs`` table), as read at one moment."""

    id: int
    """The row's number: later jobs have higher ones."""
    uuid: str
    """The task message's ``uuid``: what ``submit_task()`` returned in ``Submission.uuid``."""
    queue: str
    task: str
    state: JobState
    attempts: int
    """How many times a service started it so far."""
    max_attempts: int
    """How many times it may be started before it is left ``failed``."""
    created_at: datetime
    run_after: datetime
    """Not started before this time: its delay, or the backoff before a retry."""
    started_at: datetime | None
    """When its last attempt started."""
    finished_at: datetime | None
    lease_until: datetime | None
    """While ``running``: until when the service that claimed it holds it."""
    node_id: str | None
    """The service that ran (or runs) its last attempt."""
    on_duplicate: OnDuplicate | None
    """Its ``on_duplicate``, unless ``parallel``."""
    outcome: str | None
    """How its last attempt ended: ``ok``, ``error``, ``timeout``, ``worker_lost``, ..."""
    last_error: str | None
    """The error (and traceback) of its last failed attempt."""
    result: Any
    """What the task returned (decoded JSON), once ``done``; ``None`` otherwise."""
    message: str
    """The task message's JSON text, as stored."""
    claims: int = 0
    """How many times a service claimed it so far: each claim's number fences its outcome
    (a claim whose lease ran out cannot settle the job claimed again since)."""
    dup_key: str | None = None
    """The identity of its task and arguments that its ``on_duplicate`` goes by (set
    unless ``parallel``): the jobs that share one are duplicates."""

    @property
    def finished(self) -> bool:
        """Tell whether the job has ended (``done``, ``failed`` or ``cancelled``)."""
        return self.state in ("done", "failed", "cancelled")


def quote_identifier(name: str) -> str:
    """*name* as a quoted SQL identifier (``"dispatcher"``), for a schema from the config."""
    return '"' + name.replace('"', '""') + '"'


def get_job_query(schema: str) -> str:
    """The statement reading one job by uuid (one parameter)."""
    return f"SELECT {_SELECTED} FROM {quote_identifier(schema)}.jobs WHERE uuid = %s"


def jobs_query(
    schema: str,
    *,
    state: JobState | None,
    queue: str | None,
    task: str | None,
    limit: int,
) -> tuple[str, list[Any]]:
    """The statement listing jobs, newest first, and its parameters.

    :raises ValueError: when *state* is not a :data:`JobState` or *limit* not in 1-10000.
    """
    check_listing(state, limit)
    given = (("state", state), ("queue", queue), ("task", task))
    filters = [(column, value) for column, value in given if value is not None]
    where = " AND ".join(f"{column} = %s" for column, _ in filters)
    query = (
        f"SELECT {_SELECTED} FROM {quote_identifier(schema)}.jobs"
        + (f" WHERE {where}" if where else "")
        + " ORDER BY id DESC LIMIT %s"
    )
    return query, [value for _, value in filters] + [limit]


def check_listing(state: object, limit: object) -> None:
    """Check the options of a listing of jobs.

    :raises ValueError: when *state* is not a :data:`JobState` or *limit* not in 1-10000.
    """
    if state is not None and state not in JOB_STATES:
        raise InvalidArgumentValue(f"state: {state!r} is not one of {', '.join(JOB_STATES)}")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LISTED:
        raise InvalidArgumentValue(
            f"limit: must be an integer between 1 and {MAX_LISTED}, got {limit!r}"
        )


def may_be_stored(parameter: str, value: object, *, optional: bool = False) -> bool:
    """Tell whether a ``text`` column could hold *value*, given for *parameter* to match it.

    A ``str`` PostgreSQL cannot hold (see :mod:`dispatcher.publish.pg_text`) matches no
    job: the caller answers "none" without sending it (sent, it would fail, and abort the
    transaction it was sent in). ``None`` is accepted when *optional* (no filter).

    :raises TypeError: naming *parameter*, when *value* is not a ``str`` (nor ``None`` when
        *optional*).
    """
    if isinstance(value, str):
        return text_problem(value) is None
    if value is None and optional:
        return True
    expected = "a str or None" if optional else "a str"
    raise InvalidArgumentType(f"{parameter}: expected {expected}, got {type(value).__name__}")


def read_row(
    row: Sequence[Any], zone: tzinfo, read: Callable[[object, tzinfo], object] = read_datetime
) -> list[Any]:
    """A row of :data:`COLUMNS` as read by these statements, its times made by *read*.

    *zone* is the session's time zone; *read* is
    :func:`~dispatcher.publish.timestamps.read_datetime` (a time no datetime can hold read
    as the latest or earliest one) or :func:`~dispatcher.publish.timestamps.read_timestamp`
    (read as PostgreSQL's text of it).
    """
    values = list(row)
    for index in _TIMESTAMP_INDEXES:
        values[index] = read(values[index], zone)
    return values


def job_from_row(row: Sequence[Any], zone: tzinfo) -> Job:
    """Build a :class:`Job` from a row of :data:`COLUMNS` read in the time zone *zone*."""
    return Job(*read_row(row, zone))

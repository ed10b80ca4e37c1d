"""What ``dispatcherctl top`` shows, as plain strings: no rich, no service, no terminal.

A :class:`Poll` is what one refresh collected; the functions here read its replies
defensively (a field of an unexpected type shows as ``-``) and turn them into lines and
table rows, every value escaped (see :func:`dispatcher.server.ctl_columns.shown`), and fit
a table to the width it is drawn in (:func:`fit_table`). Both the rich screen
(:mod:`dispatcher.server.ctl_top_render`) and the plain snapshot
(:mod:`dispatcher.server.ctl_top_plain`) are drawn from them.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from dispatcher.server.brokers.pg_queue.sampler import COUNT_CAP
from dispatcher.server.ctl_columns import cut, shown, width
from dispatcher.server.ctl_render import UNKNOWN_SHAPE
from dispatcher.server.ctl_values import duration_text, size_text, value_text
from dispatcher.server.stats import QueueDepth

FAILURES_SHOWN: Final = 5
"""Recent failures shown per service (the newest); ``status`` holds more."""

WORKER_COLUMNS: Final = ("worker", "pid", "state", "task", "uuid", "running for", "done", "memory")
"""The columns of the workers table."""

FAILURE_COLUMNS: Final = ("when", "outcome", "task", "uuid", "error")
"""The columns of the recent failures table."""

QUEUE_COLUMNS: Final = ("queue", "ready", "delayed", "oldest ready waited")
"""The columns of the durable queues table."""

LEFT_OUT_FIRST: Final = ("done", "pid", "memory", "state", "running for", "outcome", "when")
"""The columns a table too wide for its width leaves out, in this order (each table has
some of them); the others are always shown."""

ERROR_WIDTH: Final = 24
"""Columns a failure's error keeps at least (it wraps in them; the other columns share
the rest)."""

SHORTEST_TASK: Final = 12
"""Columns a task's name keeps at least when it is cut short to fit."""

SHORT_UUID: Final = 8
"""Characters of a uuid shown (then an ellipsis) when a table cannot show it whole even
with every column it may leave out left out."""

COLUMN_GAP: Final = 2
"""Columns between two columns of a table."""


@dataclass(frozen=True)
class Poll:
    """What one refresh collected: the services' ``status`` replies and the queues' depth."""

    at: float
    """When it was collected, on the monotonic clock (rates divide by differences of it)."""
    wall: float
    """When it was collected, in seconds since the epoch (failures are dated against it)."""
    replies: list[dict[str, Any]] = field(default_factory=list)
    """One ``status`` reply per service that answered."""
    missing: list[str] = field(default_factory=list)
    """Node ids of services found connected that did not answer in time."""
    depths: Mapping[str, QueueDepth] | None = None
    """The durable queues' depth, by queue; ``None`` without ``brokers.pg_queue``."""
    notes: list[str] = field(default_factory=list)
    """Problems met while collecting, one line each."""
    status: int = 0
    """The exit status this poll alone gives: 0 when every expected service answered, 1
    when some did not (or none is connected, or the database cannot be reached), 2 when
    the services could not be asked (the config names no channel to ask them on)."""


@dataclass(frozen=True)
class Rates:
    """Tasks per second one service received and finished between two polls."""

    received: float
    finished: float


def node_of(reply: Mapping[str, Any]) -> str:
    """The node id a reply carries, as text."""
    return str(reply.get("node_id", "?"))


def rates(previous: Poll | None, current: Poll) -> dict[str, Rates]:
    """Each service's rates between *previous* and *current*, by node id.

    A service missing from either poll, one that restarted in between (its uptime went
    down, or a counter did), or one without counters gets none.
    """
    if previous is None or current.at <= previous.at:
        return {}
    seconds = current.at - previous.at
    before = {node_of(reply): reply for reply in previous.replies}
    found: dict[str, Rates] = {}
    for reply in current.replies:
        old = before.get(node_of(reply))
        now, then = _counters(reply), None if old is None else _counters(old)
        if now is None or then is None or any(a < b for a, b in zip(now, then, strict=True)):
            continue
        found[node_of(reply)] = Rates(
            received=(now[1] - then[1]) / seconds, finished=(now[2] - then[2]) / seconds
        )
    return found


def header_text(current: Poll) -> str:
    """The first line of a screen: how many services answered, and when."""
    clock = time.strftime("%H:%M:%S", time.localtime(current.wall))
    count = len(current.replies)
    return f"dispatcherctl top: {count} service{'' if count == 1 else 's'} at {clock}"


def summary_lines(reply: Mapping[str, Any], speed: Rates | None) -> list[str]:
    """A service's counters: uptime, pool, queue lengths, rates, tasks finished, rejected.

    And the version of dispatcher it runs, when its reply says it (an older release's does not).
    """
    pool = pool_of(reply)
    uptime = _number(reply.get("uptime"))
    version = "" if reply.get("version") is None else f"   version {cell(reply['version'])}"
    return [
        f"uptime {'-' if uptime is None else duration_text(uptime)}   pid {cell(reply.get('pid'))}"
        f"   workers {cell(pool.get('count'))} (min {cell(pool.get('min'))}, "
        f"max {cell(pool.get('max'))}){version}",
        "   ".join(f"{name} {cell(reply.get(name))}" for name in ("queued", "blocked", "delayed"))
        + "   "
        + (
            f"received {speed.received:.1f}/s   finished {speed.finished:.1f}/s"
            if speed is not None
            else "received -/s   finished -/s"
        ),
        f"finished: {counts_text(reply.get('finished')) or 'none yet'}",
    ]


def rejected_line(reply: Mapping[str, Any]) -> str | None:
    """The messages a service rejected, by reason: ``rejected: unknown_task 1``.

    ``None`` when it rejected none.
    """
    counts = counts_text(reply.get("rejected"))
    return f"rejected: {counts}" if counts else None


def counts_text(counts: object) -> str:
    """Nonzero counts by name, the largest first: ``ok 8, error 1``; empty when none."""
    found = [(-n, shown(name)) for name, value in _dict(counts).items() if (n := _number(value))]
    return ", ".join(f"{name} {-n:g}" for n, name in sorted(found))


def pool_of(reply: Mapping[str, Any]) -> Mapping[str, Any]:
    """The pool's size in a reply (``count``, ``min``, ``max``).

    A service of the first versions had no ``pool``: its ``workers`` held these numbers.
    """
    pool = reply.get("pool")
    if isinstance(pool, dict):
        return pool
    return {k: v for k, v in _dict(reply.get("workers")).items() if not isinstance(v, dict)}


def _worker_entries(reply: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[Any]]:
    """The workers a reply lists (objects), and whatever else its ``workers`` holds."""
    workers = reply.get("workers")
    if workers is None:
        return [], []
    if not isinstance(workers, dict | list):
        return [], [workers]
    values = list(workers.values()) if isinstance(workers, dict) else workers
    return [w for w in values if isinstance(w, dict)], [
        w for w in values if not isinstance(w, dict)
    ]


def worker_notes(reply: Mapping[str, Any]) -> list[str]:
    """What to say under the workers table (or in place of its rows): ``(no workers)``.

    Never that there are none when the reply says otherwise: a ``workers`` not in the
    shape this ``dispatcherctl`` knows (from a service of another version) is named and
    shown as it came, and a pool counting workers the reply does not list is said to.
    """
    listed, others = _worker_entries(reply)
    if others:
        workers = reply.get("workers")
        rest = (
            {k: v for k, v in workers.items() if not isinstance(v, dict)}
            if isinstance(workers, dict)
            else workers
        )
        return [UNKNOWN_SHAPE, f"workers: {value_text(rest)}"]
    if listed:
        return []
    count = _number(pool_of(reply).get("count"))
    if count:
        return [f"(the pool counts {count:g} workers this reply does not list; --json shows it)"]
    return ["(no workers)"]


def worker_rows(reply: Mapping[str, Any]) -> list[list[str]]:
    """A row per worker (:data:`WORKER_COLUMNS`): what it runs, tasks done, memory."""
    workers, _ = _worker_entries(reply)
    rows = []
    for worker in sorted(workers, key=lambda w: _number(w.get("worker_id")) or 0):
        age = _number(worker.get("current_task_age"))
        busy = worker.get("current_task") is not None
        rows.append(
            [
                cell(worker.get("worker_id")),
                cell(worker.get("pid")),
                cell(worker.get("state", worker.get("status"))),
                cell(worker.get("current_task")),
                cell(worker.get("current_task_uuid")),
                duration_text(age) if busy and age is not None else "-",
                cell(worker.get("finished_count")),
                _memory(worker.get("rss_bytes")),
            ]
        )
    return rows


def recent_failures(reply: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The failures a reply lists (the newest first), those of the expected shape."""
    return [f for f in _list(reply.get("recent_failures")) if isinstance(f, dict)]


def failure_rows(failures: list[dict[str, Any]], now: float) -> list[list[str]]:
    """A row (:data:`FAILURE_COLUMNS`) per failure, for the newest :data:`FAILURES_SHOWN`."""
    return [
        [
            _when(_number(failure.get("time")), now),
            cell(failure.get("outcome")),
            cell(failure.get("task")),
            cell(failure.get("uuid")),
            cell(failure.get("error")),
        ]
        for failure in failures[:FAILURES_SHOWN]
    ]


def older_failures(failures: list[dict[str, Any]]) -> str | None:
    """What says how many failures are not shown, if any."""
    left = len(failures) - FAILURES_SHOWN
    return f"and {left} older (dispatcherctl status --json)" if left > 0 else None


def queue_rows(depths: Mapping[str, QueueDepth]) -> list[list[str]]:
    """A row (:data:`QUEUE_COLUMNS`) per durable queue, the deepest first.

    By jobs ready, then jobs delayed (the most first), then by name, the numbers in names
    compared as numbers (``q2`` before ``q10``).
    """
    return [
        [
            shown(queue),
            _count(depth.ready),
            _count(depth.delayed),
            duration_text(depth.oldest_ready_age) if depth.ready else "-",
        ]
        for queue, depth in sorted(
            depths.items(),
            key=lambda item: (-item[1].ready, -item[1].delayed, _natural(item[0])),
        )
    ]


def _natural(name: str) -> list[tuple[int, int | str]]:
    """*name* as a key that compares the numbers in it as numbers."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in _DIGITS.split(name)]


_DIGITS: Final = re.compile(r"(\d+)")


def more_line(count: int, what: str) -> str:
    """The line that stands for *count* rows of *what* (plural) left out for want of room."""
    return f"… {count} more {what} (a taller terminal shows them; --once shows all)"


def fit_table(
    columns: tuple[str, ...],
    rows: list[list[str]],
    room: int | None,
    wrapped: Mapping[str, int],
    measure: Callable[[str], int] = width,
) -> tuple[tuple[str, ...], list[list[str]]]:
    """The columns of a table that fit in *room* columns, and its *rows* cut to them.

    Each row then takes one line: only the *wrapped* columns (by name, with the width each
    keeps at least) may wrap. When the whole table does not fit, a task's name is cut short
    (down to :data:`SHORTEST_TASK` columns, with an ellipsis), then the columns of
    :data:`LEFT_OUT_FIRST` are left out, in that order, until it fits; a uuid is never cut
    unless even that is not enough, and then to its first :data:`SHORT_UUID` characters
    (with every column that fits back). Narrower still, only the columns never left out
    are kept, cut as said. *measure* says how many terminal columns a text takes; without
    *room*, the table is returned whole.
    """
    if room is None:
        return columns, rows
    natural = {
        name: max(map(measure, (name, *cells))) for name, *cells in zip(columns, *rows, strict=True)
    }

    def narrowest(name: str, uuid_cut: bool) -> int:
        if name in wrapped:
            return min(natural[name], wrapped[name])
        if name == "task":
            return min(natural[name], SHORTEST_TASK)
        if name == "uuid" and uuid_cut:
            return min(natural[name], SHORT_UUID + 1)
        return natural[name]

    optional = [name for name in LEFT_OUT_FIRST if name in columns]
    for uuid_cut in (False, True):
        uuid_cells = SHORT_UUID + 1 if uuid_cut else None
        for count in range(len(optional) + 1):
            kept = tuple(name for name in columns if name not in optional[:count])
            needed = COLUMN_GAP * (len(kept) - 1) + sum(narrowest(n, uuid_cut) for n in kept)
            if needed <= room:
                task_cells = narrowest("task", uuid_cut) + room - needed if "task" in kept else 0
                return kept, _cut_rows(columns, rows, kept, task_cells, uuid_cells, measure)
    kept = tuple(name for name in columns if name not in optional)
    return kept, _cut_rows(columns, rows, kept, SHORTEST_TASK, SHORT_UUID + 1, measure)


def _cut_rows(
    columns: tuple[str, ...],
    rows: list[list[str]],
    kept: tuple[str, ...],
    task_cells: int,
    uuid_cells: int | None,
    measure: Callable[[str], int],
) -> list[list[str]]:
    """*rows* with only the *kept* columns, task names and uuids (if *uuid_cells*) cut."""
    limits = {"task": task_cells, "uuid": uuid_cells}
    shown_at = [(columns.index(name), limits.get(name)) for name in kept]
    return [
        [row[i] if limit is None else cut(row[i], limit, measure) for i, limit in shown_at]
        for row in rows
    ]


def cell(value: object) -> str:
    """A value of a reply as one cell: ``-`` for nothing, a list or an object."""
    return "-" if value is None or isinstance(value, dict | list) else shown(value)


def _counters(reply: Mapping[str, Any]) -> tuple[float, float, float] | None:
    """A reply's uptime, tasks received and tasks finished; ``None`` if one is missing."""
    uptime, received = _number(reply.get("uptime")), _number(reply.get("received"))
    finished = _finished_total(reply)
    if uptime is None or received is None or finished is None:
        return None
    return uptime, received, finished


def _finished_total(reply: Mapping[str, Any]) -> float | None:
    counts = reply.get("finished")
    if not isinstance(counts, dict):
        return None
    numbers = [_number(n) for n in counts.values()]
    return sum(n for n in numbers if n is not None)


def _when(at: float | None, now: float) -> str:
    if at is None:
        return "-"
    try:
        clock = time.strftime("%H:%M:%S", time.localtime(at))
    except (OverflowError, OSError, ValueError):  # beyond the platform's dates
        return f"{at:g}"
    return f"{clock} ({duration_text(now - at)} ago)"


def _count(n: int) -> str:
    return f">={n}" if n >= COUNT_CAP else str(n)


def _memory(value: object) -> str:
    size = _number(value)
    return "-" if size is None else size_text(size)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def _dict(value: object) -> dict[Any, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []

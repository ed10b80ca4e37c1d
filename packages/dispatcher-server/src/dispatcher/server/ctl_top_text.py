"""What ``dispatcherctl top`` shows, as plain strings: no rich, no service, no terminal.

The functions here read the replies of a :class:`~dispatcher.server.ctl_top_data.Poll`
defensively (a field of an unexpected type shows as ``-``) and turn them into lines and
table rows, every value escaped (see :func:`dispatcher.server.ctl_columns.shown`). Both
the rich screen (:mod:`dispatcher.server.ctl_top_render`) and the plain snapshot
(:mod:`dispatcher.server.ctl_top_plain`) are drawn from them, each table fitted to the
width it is drawn in (:func:`dispatcher.server.ctl_top_fit_width.fit_table`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any, Final

from dispatcher.server.brokers.pg_queue.sampler import COUNT_CAP
from dispatcher.server.ctl_columns import shown
from dispatcher.server.ctl_render import UNKNOWN_SHAPE
from dispatcher.server.ctl_top_data import Poll, Rates
from dispatcher.server.ctl_top_fields import as_dict, as_list, number
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

ERROR_WIDTH: Final = 24
"""Columns a failure's error keeps at least (it wraps in them; the other columns share
the rest)."""


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
    uptime = number(reply.get("uptime"))
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
    found = [(-n, shown(name)) for name, value in as_dict(counts).items() if (n := number(value))]
    return ", ".join(f"{name} {-n:g}" for n, name in sorted(found))


def pool_of(reply: Mapping[str, Any]) -> Mapping[str, Any]:
    """The pool's size in a reply (``count``, ``min``, ``max``).

    A service of the first versions had no ``pool``: its ``workers`` held these numbers.
    """
    pool = reply.get("pool")
    if isinstance(pool, dict):
        return pool
    return {k: v for k, v in as_dict(reply.get("workers")).items() if not isinstance(v, dict)}


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
    count = number(pool_of(reply).get("count"))
    if count:
        return [f"(the pool counts {count:g} workers this reply does not list; --json shows it)"]
    return ["(no workers)"]


def worker_rows(reply: Mapping[str, Any]) -> list[list[str]]:
    """A row per worker (:data:`WORKER_COLUMNS`): what it runs, tasks done, memory."""
    workers, _ = _worker_entries(reply)
    rows = []
    for worker in sorted(workers, key=lambda w: number(w.get("worker_id")) or 0):
        age = number(worker.get("current_task_age"))
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
    return [f for f in as_list(reply.get("recent_failures")) if isinstance(f, dict)]


def failure_rows(failures: list[dict[str, Any]], now: float) -> list[list[str]]:
    """A row (:data:`FAILURE_COLUMNS`) per failure, for the newest :data:`FAILURES_SHOWN`."""
    return [
        [
            _when(number(failure.get("time")), now),
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


def cell(value: object) -> str:
    """A value of a reply as one cell: ``-`` for nothing, a list or an object."""
    return "-" if value is None or isinstance(value, dict | list) else shown(value)


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
    size = number(value)
    return "-" if size is None else size_text(size)

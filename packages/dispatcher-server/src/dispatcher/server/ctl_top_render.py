"""What ``dispatcherctl top`` shows: pure functions from collected replies to rich renderables.

Nothing here talks to a service or a terminal: :func:`screen` turns one :class:`Poll` (and
the one before it, for rates) into what is drawn. Every value from a reply is shown escaped
(see :func:`dispatcher.server.ctl_render.shown`) and as plain text, never as rich markup: a
task name or an error cannot style the screen or send the terminal control sequences.
Replies are read defensively: a field of an unexpected type shows as ``-``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from dispatcher.server.brokers.pg_queue.sampler import COUNT_CAP
from dispatcher.server.ctl_render import duration_text, shown, size_text
from dispatcher.server.stats import QueueDepth

FAILURES_SHOWN: Final = 5
"""Recent failures shown per service (the newest); ``status`` holds more."""


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


def _counters(reply: Mapping[str, Any]) -> tuple[float, float, float] | None:
    """A reply's uptime, tasks received and tasks finished; ``None`` if one is missing."""
    uptime, received = _number(reply.get("uptime")), _number(reply.get("received"))
    finished = _finished_total(reply)
    if uptime is None or received is None or finished is None:
        return None
    return uptime, received, finished


def screen(
    current: Poll,
    previous: Poll | None = None,
    interval: float | None = None,
    quit_keys: bool = True,
) -> Group:
    """Everything ``top`` draws for *current*: a header, a panel per service, the queues.

    *previous* gives the rates; *interval* (seconds between refreshes) is shown in the
    header of the live view, and a snapshot has none; *quit_keys* says whether ``q`` quits
    it (standard input is a terminal), else only Ctrl-C does.
    """
    speeds = rates(previous, current)
    clock = time.strftime("%H:%M:%S", time.localtime(current.wall))
    count = len(current.replies)
    header = Text(f"dispatcherctl top: {count} service{'' if count == 1 else 's'} at {clock}")
    if interval is not None:
        quits = "q quits" if quit_keys else "Ctrl-C quits"
        header.append(f", every {interval:g} s; {quits}", style="dim")
    parts: list[RenderableType] = [header]
    for reply in sorted(current.replies, key=node_of):
        parts.append(_panel_or_why_not(reply, speeds.get(node_of(reply)), current.wall))
    for node in current.missing:
        parts.append(Text(f"{shown(node)}: no answer in time", style="bold red"))
    if current.depths is not None:
        parts.append(durable_queues(current.depths))
    parts += [Text(note, style="yellow") for note in current.notes]
    return Group(*parts)


def _panel_or_why_not(reply: Mapping[str, Any], speed: Rates | None, now: float) -> Panel:
    """:func:`service_panel`, or a panel saying why the reply cannot be shown.

    A reply may come from anyone: one odd reply must not take down the view of every service.
    """
    try:
        return service_panel(reply, speed, now)
    except Exception as exc:
        why = f"cannot show this reply ({type(exc).__name__}: {shown(exc)}); --json shows it"
        return Panel(Text(why, style="red"), title=Text(shown(node_of(reply))), title_align="left")


def service_panel(reply: Mapping[str, Any], speed: Rates | None, now: float) -> Panel:
    """One service: its counters, its workers and what each runs, its recent failures."""
    title = Text(shown(node_of(reply)), style="bold")
    if "error" in reply:
        body: RenderableType = Text(f"error: {shown(reply['error'])}", style="red")
        return Panel(body, title=title, title_align="left")
    parts: list[RenderableType] = [summary(reply, speed), workers_table(reply)]
    failures = _list(reply.get("recent_failures"))
    if failures:
        parts.append(failures_table(failures, now))
    return Panel(Group(*parts), title=title, title_align="left")


def summary(reply: Mapping[str, Any], speed: Rates | None) -> Text:
    """The service's counters: uptime, pool, queue lengths, rates, tasks finished."""
    pool = _dict(reply.get("pool"))
    uptime = _number(reply.get("uptime"))
    lines = [
        f"uptime {'-' if uptime is None else duration_text(uptime)}   pid {_cell(reply.get('pid'))}"
        f"   workers {_cell(pool.get('count'))} (min {_cell(pool.get('min'))}, "
        f"max {_cell(pool.get('max'))})",
        "   ".join(f"{name} {_cell(reply.get(name))}" for name in ("queued", "blocked", "delayed"))
        + "   "
        + (
            f"received {speed.received:.1f}/s   finished {speed.finished:.1f}/s"
            if speed is not None
            else "received -/s   finished -/s"
        ),
    ]
    finished = [
        (-n, shown(outcome))
        for outcome, value in _dict(reply.get("finished")).items()
        if (n := _number(value))
    ]
    counts = ", ".join(f"{outcome} {-n:g}" for n, outcome in sorted(finished))
    lines.append(f"finished: {counts or 'none yet'}")
    return Text("\n".join(lines))


WORKER_COLUMNS: Final = ("worker", "pid", "state", "task", "uuid", "running for", "done", "memory")
"""The columns of :func:`workers_table`."""


def workers_table(reply: Mapping[str, Any]) -> Table:
    """A row per worker: what it runs (task, uuid, for how long), tasks done, memory."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in WORKER_COLUMNS:
        table.add_column(column, overflow="fold")
    workers = [w for w in _dict(reply.get("workers")).values() if isinstance(w, dict)]
    for worker in sorted(workers, key=lambda w: _number(w.get("worker_id")) or 0):
        age = _number(worker.get("current_task_age"))
        busy = worker.get("current_task") is not None
        table.add_row(
            *(
                Text(cell)
                for cell in (
                    _cell(worker.get("worker_id")),
                    _cell(worker.get("pid")),
                    _cell(worker.get("state", worker.get("status"))),
                    _cell(worker.get("current_task")),
                    _cell(worker.get("current_task_uuid")),
                    duration_text(age) if busy and age is not None else "-",
                    _cell(worker.get("finished_count")),
                    _memory(worker.get("rss_bytes")),
                )
            )
        )
    if not workers:
        table.add_row(Text("(no workers)"))
    return table


def failures_table(failures: list[Any], now: float) -> Table:
    """The newest failures (:data:`FAILURES_SHOWN`): when, how, task, uuid, error line."""
    table = Table(
        title="recent failures", title_justify="left", box=None, pad_edge=False, header_style="bold"
    )
    for column in ("when", "outcome", "task", "uuid", "error"):
        table.add_column(column, overflow="fold")
    entries = [f for f in failures if isinstance(f, dict)]
    for failure in entries[:FAILURES_SHOWN]:
        table.add_row(
            Text(_when(_number(failure.get("time")), now)),
            Text(_cell(failure.get("outcome")), style="red"),
            Text(_cell(failure.get("task"))),
            Text(_cell(failure.get("uuid"))),
            Text(_cell(failure.get("error"))),
        )
    if len(entries) > FAILURES_SHOWN:
        table.caption = f"and {len(entries) - FAILURES_SHOWN} older (dispatcherctl status --json)"
        table.caption_justify = "left"
    return table


def durable_queues(depths: Mapping[str, QueueDepth]) -> Table:
    """The durable queues' depth: jobs ready, jobs waiting for later, the oldest ready job."""
    table = Table(
        title="durable queues (brokers.pg_queue)",
        title_justify="left",
        box=None,
        pad_edge=False,
        header_style="bold",
    )
    for column in ("queue", "ready", "delayed", "oldest ready waited"):
        table.add_column(column, overflow="fold")
    for queue, depth in sorted(depths.items()):
        table.add_row(
            Text(shown(queue)),
            Text(_count(depth.ready)),
            Text(_count(depth.delayed)),
            Text(duration_text(depth.oldest_ready_age) if depth.ready else "-"),
        )
    if not depths:
        table.add_row(Text("(not sampled)"))
    return table


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


def _cell(value: object) -> str:
    return "-" if value is None or isinstance(value, dict | list) else shown(value)

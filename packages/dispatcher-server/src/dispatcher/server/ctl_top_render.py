"""What ``dispatcherctl top`` draws with rich: pure functions from replies to renderables.

Nothing here talks to a service or a terminal: :func:`screen` turns one :class:`Poll` (and
the one before it, for rates) into what is drawn, from the strings
:mod:`dispatcher.server.ctl_top_text` makes of it. Every value from a reply is shown escaped
(see :func:`dispatcher.server.ctl_columns.shown`) and as plain text, never as rich markup: a
task name or an error cannot style the screen or send the terminal control sequences.
A table fits the width it is drawn in (see :func:`dispatcher.server.ctl_top_fit_width.fit_table`):
its rows take one line each, only a failure's error wraps, in the room left.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, Final

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from dispatcher.server.ctl_columns import shown
from dispatcher.server.ctl_top_data import Poll, Rates, node_of, rates
from dispatcher.server.ctl_top_fit import FittedScreen
from dispatcher.server.ctl_top_fit_width import fit_table
from dispatcher.server.ctl_top_text import (
    ERROR_WIDTH,
    FAILURE_COLUMNS,
    FAILURES_SHOWN,
    QUEUE_COLUMNS,
    WORKER_COLUMNS,
    failure_rows,
    header_text,
    more_line,
    older_failures,
    queue_rows,
    recent_failures,
    rejected_line,
    summary_lines,
    worker_notes,
    worker_rows,
)
from dispatcher.server.stats import QueueDepth

__all__ = [
    "FAILURES_SHOWN",
    "WORKER_COLUMNS",
    "Fitted",
    "FittedScreen",
    "Poll",
    "Rates",
    "durable_queues",
    "failures_table",
    "node_of",
    "rates",
    "screen",
    "service_panel",
    "summary",
    "workers_table",
]

WRAPPED_WIDTH: Final = 8
"""Columns the other wrapped columns keep at least."""

WRAPPED: Final = frozenset({"error", "ready", "delayed", "oldest ready waited"})
"""Columns that wrap when they must; the others never do (they are cut short, see
:func:`dispatcher.server.ctl_top_fit_width.fit_table`)."""


def screen(
    current: Poll,
    previous: Poll | None = None,
    interval: float | None = None,
    quit_keys: bool = True,
    fit_height: bool = False,
) -> FittedScreen:
    """Everything ``top`` draws for *current*: a header, a panel per service, the queues.

    *previous* gives the rates; *interval* (seconds between refreshes) is shown in the
    header of the live view, and a snapshot has none; *quit_keys* says whether ``q`` quits
    it (standard input is a terminal), else only Ctrl-C does. With *fit_height* (the live
    view), it fits the height of the console it is drawn on: see :class:`FittedScreen`.
    """
    speeds = rates(previous, current)
    header = Text(header_text(current))
    if interval is not None:
        quits = "q quits" if quit_keys else "Ctrl-C quits"
        header.append(f", every {interval:g} s; {quits}", style="dim")
    replies = sorted(current.replies, key=node_of)
    sizes = {f"workers {n}": _worker_count(reply) for n, reply in enumerate(replies)}
    if current.depths:
        sizes[QUEUES] = len(current.depths)

    def parts(rows: Mapping[str, int]) -> Group:
        drawn: list[RenderableType] = [header]
        for n, reply in enumerate(replies):
            shown_rows = rows.get(f"workers {n}")
            speed = speeds.get(node_of(reply))
            drawn.append(_panel_or_why_not(reply, speed, current.wall, shown_rows))
        for node in current.missing:
            drawn.append(Text(f"{shown(node)}: no answer in time", style="bold red"))
        if current.depths is not None:
            drawn.append(durable_queues(current.depths, rows.get(QUEUES)))
        drawn += [Text(note, style="yellow") for note in current.notes]
        return Group(*drawn)

    return FittedScreen(parts, sizes, fit_height)


QUEUES: Final = "queues"
"""The key of the durable queues' rows in :attr:`FittedScreen.sizes`."""


def _worker_count(reply: Mapping[str, Any]) -> int:
    """How many workers :func:`workers_table` lists for *reply* (0 for one it cannot read)."""
    try:
        return 0 if "error" in reply else len(worker_rows(reply))
    except Exception:  # a reply may come from anyone: _panel_or_why_not says why
        return 0


def _panel_or_why_not(
    reply: Mapping[str, Any], speed: Rates | None, now: float, workers: int | None = None
) -> Panel:
    """:func:`service_panel`, or a panel saying why the reply cannot be shown.

    A reply may come from anyone: one odd reply must not take down the view of every service.
    """
    try:
        return service_panel(reply, speed, now, workers)
    except Exception as exc:
        why = f"cannot show this reply ({type(exc).__name__}: {shown(exc)}); --json shows it"
        return Panel(Text(why, style="red"), title=Text(shown(node_of(reply))), title_align="left")


def service_panel(
    reply: Mapping[str, Any], speed: Rates | None, now: float, workers: int | None = None
) -> Panel:
    """One service: its counters, its workers and what each runs, its recent failures.

    Only the first *workers* workers are listed when given (see :func:`workers_table`).
    """
    title = Text(shown(node_of(reply)), style="bold")
    if "error" in reply:
        body: RenderableType = Text(f"error: {shown(reply['error'])}", style="red")
        return Panel(body, title=title, title_align="left")
    listed = partial(workers_table, reply, shown_rows=workers)
    parts: list[RenderableType] = [summary(reply, speed), Fitted(listed)]
    left_out = 0 if workers is None else len(worker_rows(reply)) - workers
    if left_out > 0:
        parts.append(Text(more_line(left_out, "workers"), style="dim"))
    failures = recent_failures(reply)
    if failures:
        parts.append(Fitted(partial(failures_table, failures, now)))
    return Panel(Group(*parts), title=title, title_align="left")


def summary(reply: Mapping[str, Any], speed: Rates | None) -> Text:
    """The service's counters: uptime, pool, queue lengths, rates, tasks finished.

    And the messages it rejected, by reason (in red), if any.
    """
    text = Text("\n".join(summary_lines(reply, speed)))
    rejected = rejected_line(reply)
    if rejected is not None:
        text.append("\n" + rejected, style="red")
    return text


def workers_table(
    reply: Mapping[str, Any], width: int | None = None, *, shown_rows: int | None = None
) -> Table:
    """A row per worker: what it runs (task, uuid, for how long), tasks done, memory.

    Fitted to the *width* it is drawn in: each row takes one line (see
    :func:`dispatcher.server.ctl_top_fit_width.fit_table`). With *shown_rows*, only the first
    ones (:func:`service_panel` says how many more there are).
    """
    table = _table(WORKER_COLUMNS, worker_rows(reply)[:shown_rows], width)
    notes = worker_notes(reply)
    if notes:
        table.caption = Text("\n".join(notes))
        table.caption_justify = "left"
    return table


def failures_table(failures: list[Any], now: float, width: int | None = None) -> Table:
    """The newest failures (:data:`FAILURES_SHOWN`): when, how, task, uuid, error line.

    Fitted to the *width* it is drawn in (see
    :func:`dispatcher.server.ctl_top_fit_width.fit_table`): the error keeps at least
    :data:`ERROR_WIDTH` columns and wraps in them.
    """
    entries = [f for f in failures if isinstance(f, dict)]
    table = _table(FAILURE_COLUMNS, failure_rows(entries, now), width, "recent failures")
    caption = older_failures(entries)
    if caption is not None:
        table.caption = caption
        table.caption_justify = "left"
    return table


class Fitted:
    """A table built for the width it is drawn in (by ``build(width)``)."""

    def __init__(self, build: Callable[[int], Table]) -> None:
        self.build = build

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        """Yield the table built for *options*' width."""
        yield self.build(options.max_width)


def durable_queues(
    depths: Mapping[str, QueueDepth], shown_rows: int | None = None
) -> RenderableType:
    """The durable queues' depth: jobs ready, jobs waiting for later, the oldest ready job.

    The deepest first; with *shown_rows*, only the first ones, and a line saying how many
    more there are.
    """
    rows = queue_rows(depths)
    title = "durable queues (brokers.pg_queue)"
    table = _table(QUEUE_COLUMNS, rows[:shown_rows], None, title)
    if not depths:
        table.add_row(Text("(not sampled)"))
    if shown_rows is not None and shown_rows < len(rows):
        return Group(table, Text(more_line(len(rows) - shown_rows, "queues"), style="dim"))
    return table


def _table(
    columns: tuple[str, ...], rows: list[list[str]], width: int | None, title: str | None = None
) -> Table:
    """A table of *rows*, fitted to *width* if given; only its :data:`WRAPPED` columns wrap."""
    table = Table(title=title, title_justify="left", box=None, pad_edge=False, header_style="bold")
    least = {name: _least(name) for name in columns if name in WRAPPED}
    kept, fitted = fit_table(columns, rows, width, least, cell_len)
    for name in kept:
        if name in WRAPPED:
            table.add_column(name, overflow="fold")
        else:
            table.add_column(name, no_wrap=True, overflow="ellipsis")
    for row in fitted:
        table.add_row(
            *(
                Text(value, style="red" if name == "outcome" else "")
                for name, value in zip(kept, row, strict=True)
            )
        )
    return table


def _least(column: str) -> int:
    return ERROR_WIDTH if column == "error" else WRAPPED_WIDTH

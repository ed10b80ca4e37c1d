"""Fitting a table of ``dispatcherctl top`` to the width it is drawn in.

Each row then takes one line: a task's name is cut short, then the columns that may go are
left out, then a uuid is cut (see :func:`fit_table`). Both the rich screen
(:mod:`dispatcher.server.ctl_top_render`) and the plain snapshot
(:mod:`dispatcher.server.ctl_top_plain`) fit their tables so.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final

from dispatcher.server.ctl_columns import cut, width

LEFT_OUT_FIRST: Final = ("done", "pid", "memory", "state", "running for", "outcome", "when")
"""The columns a table too wide for its width leaves out, in this order (each table has
some of them); the others are always shown."""


SHORTEST_TASK: Final = 12
"""Columns a task's name keeps at least when it is cut short to fit."""

SHORT_UUID: Final = 8
"""Characters of a uuid shown (then an ellipsis) when a table cannot show it whole even
with every column it may leave out left out."""

COLUMN_GAP: Final = 2
"""Columns between two columns of a table."""


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

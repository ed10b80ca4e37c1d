"""The lines of ``dispatcher_tasks_finished_total`` exported at 0 before anything happened."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from dispatcher.schema import Outcome
from dispatcher.server.metrics_labels import labels

ZERO_SERIES_OUTCOMES: Final = tuple(
    outcome.value for outcome in Outcome if outcome not in (Outcome.OK, Outcome.CANCELLED)
)
"""The outcomes of ``dispatcher_tasks_finished_total`` exported at 0 for each registered task:
the failures (``error``, ``timeout``, ``killed``, ``worker_lost``, ``memory_exceeded``), which
alerts watch. ``ok`` and ``cancelled`` (asked for) appear once they happen."""

MAX_ZERO_SERIES_TASKS: Final = 1_000
"""Registered tasks beyond which none has series exported at 0 (each scrape would carry
thousands of lines of zeros)."""


class ZeroSeries:
    """The lines of ``dispatcher_tasks_finished_total`` at 0: registered tasks, failure outcomes.

    One for each of :data:`ZERO_SERIES_OUTCOMES` with each registered task that did not end
    so yet, while there are at most :data:`MAX_ZERO_SERIES_TASKS` registered tasks (none
    beyond). Made once for the registered names (again when they are replaced, on reload),
    and again when a pair of them first happens: a scrape copies them, no more.
    """

    def __init__(self) -> None:
        self._names: frozenset[str] | None = None
        self._lines: dict[tuple[str, str], str] = {}
        self._finished = -1
        self._text = ""

    def lines(self, names: frozenset[str], finished: Mapping[tuple[str, str], int]) -> str:
        """The lines for *names*, the registered tasks, less the pairs *finished* counts.

        *finished* only gains pairs (a counter since the start), but for those of the tasks
        a reload removes, dropped as the names are replaced: the lines are made again when
        the names are new, or *finished* has more pairs than last time.
        """
        if names is not self._names:
            self._names = names
            self._lines = {}
            if len(names) <= MAX_ZERO_SERIES_TASKS:
                self._lines = {
                    (task, outcome): (
                        f"dispatcher_tasks_finished_total{labels(task=task, outcome=outcome)} 0\n"
                    )
                    for task in sorted(names)
                    for outcome in ZERO_SERIES_OUTCOMES
                }
            self._finished = -1
        if len(finished) != self._finished:
            self._finished = len(finished)
            self._text = "".join(line for pair, line in self._lines.items() if pair not in finished)
        return self._text

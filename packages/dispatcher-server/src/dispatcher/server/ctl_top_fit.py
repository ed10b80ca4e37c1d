"""Fitting ``dispatcherctl top``'s live view to the terminal's height by cutting its lists."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult


class FittedScreen:
    """The screen of ``top``, fitted to the height it is drawn in, when it has one.

    ``parts(rows)`` draws it with, for each list of rows named in ``sizes`` (the workers
    of each service, the durable queues), the first ``rows[name]`` of its rows and a line
    ``… N more`` for the others (a list not named is drawn whole). When the whole screen
    does not fit the height, the lists are cut, not the rest: the header, each service's
    box with its counters and recent failures, the services that did not answer and the
    notes stay. The lists share the lines left by turns, a row at a time to the list
    showing the fewest, so that a long worker list leaves room for the queues and the
    other way round. Unless told to fit (a snapshot), everything is drawn.
    """

    def __init__(
        self,
        parts: Callable[[Mapping[str, int]], Group],
        sizes: dict[str, int],
        fit_height: bool = False,
    ) -> None:
        self.parts = parts
        self.sizes = sizes
        """The number of rows of each list that may be cut."""
        self.fit_height = fit_height
        """Whether to fit the height of the console it is drawn on."""

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        """Yield the screen drawn whole, or with its lists cut to fit the console's height.

        That of the console, not of *options*: rich's full-screen mode gives its height to
        the outermost renderable only (this one is inside a group).
        """
        height = options.size.height if self.fit_height else None
        whole = self.parts({})
        if height is None or self._lines(whole, console, options) <= height:
            yield whole
            return
        rows = dict.fromkeys(self.sizes, 0)
        spare = height - self._lines(self.parts(rows), console, options)
        while True:
            open_lists = [name for name in self.sizes if rows[name] < self.sizes[name]]
            # The last row of a list takes the line of its "… N more": it costs nothing.
            free = [name for name in open_lists if rows[name] + 1 == self.sizes[name]]
            if free:
                rows[free[0]] += 1
                continue
            if not open_lists or spare <= 0:
                break
            rows[min(open_lists, key=lambda name: rows[name])] += 1
            spare -= 1
        drawn = self.parts(rows)
        # A row may take more than one line (a queue's values wrap when very narrow).
        while self._lines(drawn, console, options) > height and any(rows.values()):
            widest = max(rows, key=lambda name: rows[name])
            rows[widest] -= 1
            drawn = self.parts(rows)
        yield drawn

    @staticmethod
    def _lines(renderable: RenderableType, console: Console, options: ConsoleOptions) -> int:
        return len(console.render_lines(renderable, options.update(height=None), pad=False))

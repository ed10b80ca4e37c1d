"""The text of ``/metrics``, made in a worker thread, one at a time, shared by the scrapes.

With thousands of task names, the text is megabytes, made in a second or more: on the event
loop, that second would stop everything else (dispatching, timers, the durable queue's
lease renewals, control). Here the loop only copies the numbers (a
:class:`~.metrics_snapshot.MetricsSnapshot`), and a worker thread writes the text; the loop
keeps running meanwhile (the interpreter lets it run at least every few milliseconds).

One text is made at a time: a scrape that comes while one is being made waits for it and
answers with it (its numbers were taken a moment before the scrape came, as a scrape's
always are by the time it is read), so that any number of clients cost one thread and one
text at a time.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Final

import anyio
import anyio.to_thread

from dispatcher.server.metrics_snapshot import (
    MetricsNumbers,
    MetricsSnapshot,
    take_snapshot_in_turns,
)
from dispatcher.server.metrics_text import render_snapshot
from dispatcher.server.metrics_zeros import ZeroSeries
from dispatcher.server.resources import shortage_text

PIECE_LINES: Final = 2048
"""Lines joined at a time, in the worker thread: a join of a whole text of megabytes is one
step of the interpreter that holds it (and so the event loop) for tens of milliseconds."""

PIECE_BYTES: Final = 1 << 20
"""Bytes of a piece of the body, at least (but the last): the loop sends each in one await.
Small pieces (a few kilobytes) cost a turn of the loop each, a second or more for a text of
megabytes while the loop is busy; a piece of 1 MiB is written in well under a millisecond."""


Body = tuple[bytes, ...]
"""The body of an answer, in pieces: sent one after the other, never joined (a copy of
megabytes on the loop, and another in the transport's buffer, would stop it a while)."""


def encode_snapshot(snapshot: MetricsSnapshot) -> Body:
    """The body of a ``/metrics`` answer: *snapshot* rendered, UTF-8, in pieces."""
    pieces: list[bytes] = []
    gathered: list[bytes] = []
    size = 0
    lines = render_snapshot(snapshot)
    while part := "".join(itertools.islice(lines, PIECE_LINES)).encode():
        gathered.append(part)
        size += len(part)
        if size >= PIECE_BYTES:
            pieces.append(b"".join(gathered))
            gathered, size = [], 0
    if gathered:
        pieces.append(b"".join(gathered))
    return tuple(pieces)


class _Making:
    """One text being made, and the scrapes waiting for it."""

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.text: Body | None = None


class MetricsText:
    """Makes the text of ``/metrics`` from *source* off the event loop (see the module)."""

    def __init__(
        self, source: MetricsNumbers, encode: Callable[[MetricsSnapshot], Body] = encode_snapshot
    ) -> None:
        self._source = source
        self._encode = encode
        self._zeros = ZeroSeries()
        self._making: _Making | None = None
        self.made = 0
        """Texts made so far (scrapes that shared one count once)."""

    async def text(self) -> Body:
        """The metrics now, as the body of an answer (in pieces).

        Made by the scrape that found none being made; the others wait for it. Its making is
        not cancelled with the scrape that started it (its client gone, say): at most a
        render's time, after which the waiting scrapes have it.
        """
        while True:
            making = self._making
            if making is None:
                return await self._make()
            await making.done.wait()
            if making.text is not None:
                return making.text
            # The one that made it failed (an internal error, its own): try anew.

    async def _make(self) -> Body:
        making = self._making = _Making()
        try:
            snapshot = await take_snapshot_in_turns(self._source, self._zeros)
            with anyio.CancelScope(shield=True):
                text = making.text = await self._render(snapshot)
        finally:
            self._making = None
            making.done.set()
        self.made += 1
        return text

    async def _render(self, snapshot: MetricsSnapshot) -> Body:
        try:
            return await anyio.to_thread.run_sync(self._encode, snapshot)
        except RuntimeError as exc:
            if shortage_text(exc) is None:
                raise
            return self._encode(snapshot)  # no thread could start (a limit reached): here

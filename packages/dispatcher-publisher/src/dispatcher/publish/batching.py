"""Collecting submissions made inside ``batch()`` to send them in one round trip.

A block's :class:`Batch` is current (``current_batch``) in its context, and in contexts
copied from it (an asyncio task started in the block, ``asyncio.to_thread``): what those
submit while the block runs joins it; once the block has ended, the batch is closed and
they send at once. A block inside another one joins the outer batch when it ends (nothing,
if it raises), unless it was given a connection of its own.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field

from dispatcher.publish.submission import Submission
from dispatcher.schema import InvalidArgumentType


@dataclass
class Batch:
    """Submissions collected by a ``batch()`` block, sent together when it ends."""

    connection: object | None = None
    """The connection the batch is sent on, or ``None`` for the SDK's own."""
    submissions: list[Submission] = field(default_factory=list)
    """Everything submitted in the block so far, in order."""
    closed: bool = False
    """Whether the block has ended: nothing joins the batch any more."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, submissions: Sequence[Submission]) -> bool:
        """Add *submissions* unless the batch is closed; tell whether they were added."""
        with self._lock:
            if self.closed:
                return False
            self.submissions.extend(submissions)
            return True

    def close(self) -> list[Submission]:
        """Close the batch; return what it holds."""
        with self._lock:
            self.closed = True
            return list(self.submissions)


current_batch: ContextVar[Batch | None] = ContextVar("dispatcher_current_batch", default=None)
"""The innermost open ``batch()`` of this thread or task, if any."""


def collect(submission: Submission, connection: object | None) -> bool:
    """Add *submission* to the open batch, if there is one; tell whether it was added.

    :raises TypeError: when a connection is passed to a single call inside a batch.
    """
    batch = current_batch.get()
    if batch is None or batch.closed:
        return False
    if connection is not None:
        raise InvalidArgumentType(
            "inside batch(), pass connection= to batch(), not to each submission"
        )
    return batch.add([submission])


def outer_batch(connection: object | None) -> Batch | None:
    """The open batch a new block with *connection* joins when it ends, if any."""
    outer = current_batch.get()
    if outer is None or outer.closed:
        return None
    if connection is not None and connection is not outer.connection:
        return None  # a block on a connection of its own sends in that connection's transaction
    return outer

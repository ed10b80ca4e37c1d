"""Collecting submissions made inside ``batch()`` to send them in one round trip.

A block's :class:`Batch` is current (``current_batch``) in its context, and in contexts
copied from it (an asyncio task started in the block, ``asyncio.to_thread``): what those
submit while the block runs joins it; once the block has ended, the batch is closed and
they send at once. A block inside another one joins the outer batch when it ends (nothing,
if it raises), unless it was given a connection of its own.

A batch takes submissions only while it is usable: open, and in the process that entered
the block. Anything submitted where the current batch is not (the block ended, or this
process was forked inside the block) is sent at once, never held by a batch that will not
send it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field

from dispatcher.publish.submission import Submission
from dispatcher.schema import InvalidArgumentType

logger = logging.getLogger("dispatcher.publish")

_pid = os.getpid()
"""This process's id, kept up to date in forked children: asking costs a system call."""


def _after_fork_in_child() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_after_fork_in_child)


@dataclass
class Batch:
    """Submissions collected by a ``batch()`` block, sent together when it ends."""

    connection: object | None = None
    """The connection the batch is sent on, or ``None`` for the SDK's own."""
    submissions: list[Submission] = field(default_factory=list)
    """Everything submitted in the block so far, in order."""
    closed: bool = False
    """Whether the block has ended: nothing joins the batch any more."""
    pid: int = field(default_factory=lambda: _pid)
    """The process that entered the block: only it sends the batch."""
    # Re-entrant: a signal handler (or a __del__) submitting in the thread it interrupted
    # may find that thread adding to the batch.
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    @property
    def usable(self) -> bool:
        """Whether submissions may join it: open, and in the process that entered the block."""
        return not self.closed and self.pid == _pid

    @property
    def inherited(self) -> bool:
        """Whether this process was forked inside the block: the batch is the parent's."""
        return self.pid != _pid

    def add(self, submissions: Sequence[Submission]) -> bool:
        """Add *submissions* unless the batch is not usable; tell whether they were added."""
        if self.pid != _pid:
            return False  # (its lock may have been held by another thread at the fork)
        with self._lock:
            if self.closed:
                return False
            self.submissions.extend(submissions)
            return True

    def close(self) -> list[Submission]:
        """Close the batch; return what it holds (nothing in a process forked in the block)."""
        if self.pid != _pid:
            self.closed = True
            return []
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
    if batch is None or not batch.usable:
        return False
    if connection is not None:
        raise InvalidArgumentType(
            "inside batch(), pass connection= to batch(), not to each submission"
        )
    return batch.add([submission])


def outer_batch(connection: object | None) -> Batch | None:
    """The open batch a new block with *connection* joins when it ends, if any."""
    outer = current_batch.get()
    if outer is None or not outer.usable:
        return None
    if connection is not None and connection is not outer.connection:
        return None  # a block on a connection of its own sends in that connection's transaction
    return outer


def ending(batch: Batch) -> list[Submission]:
    """Close the batch of a block ending well; return what it is to send.

    Nothing in a process forked inside the block (its submissions from before the fork are
    the parent's, which sends them; those made here since were sent at once): said
    as a warning: the block's all or nothing did not hold here.
    """
    submissions = batch.close()
    if batch.inherited:
        logger.warning(
            "a batch() block entered before this process was forked (pid %d) ended in the"
            " child (pid %d): its submissions from before the fork are the parent's to"
            " send, and are not sent again here; those made in the child were sent at once",
            batch.pid,
            _pid,
        )
    return submissions

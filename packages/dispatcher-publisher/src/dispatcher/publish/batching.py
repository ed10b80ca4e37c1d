"""Collecting submissions made inside ``batch()`` to send them in one round trip."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field

from dispatcher.publish.submission import Submission


@dataclass
class Batch:
    """Submissions collected by a ``batch()`` block, sent together when it ends."""

    connection: object | None = None
    """The connection the batch is sent on, or ``None`` for the SDK's own."""
    submissions: list[Submission] = field(default_factory=list)
    """Everything submitted in the block so far, in order."""


current_batch: ContextVar[Batch | None] = ContextVar("dispatcher_current_batch", default=None)
"""The innermost open ``batch()`` of this thread or task, if any."""


def collect(submission: Submission, connection: object | None) -> bool:
    """Add *submission* to the open batch, if there is one; tell whether it was added.

    :raises TypeError: when a connection is passed to a single call inside a batch.
    """
    batch = current_batch.get()
    if batch is None:
        return False
    if connection is not None:
        raise TypeError("inside batch(), pass connection= to batch(), not to each submission")
    batch.submissions.append(submission)
    return True

"""What a submission is once checked: the message, where it goes, and what carries it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Submission:
    """A task message ready to send (or sent): what ``submit_task`` and ``.delay()`` return."""

    uuid: str
    """The submission's identifier, to find or cancel the task later."""
    channel: str
    """The channel the message is (or was) sent on: for a durable queue, the queue's name."""
    message: Mapping[str, Any]
    """The task message, as the service receives it."""
    payloads: tuple[str, ...]
    """What the broker sends: the message's JSON text (in a signed envelope when the config
    has a key), or its chunk envelopes. For a durable queue, the JSON text alone: the row
    stores it whole, unsigned."""
    max_attempts: int | None = None
    """For a durable queue: how many times the job may be started (``None``: the queue's
    ``max_attempts``). Stored in the job's row, never in the message."""

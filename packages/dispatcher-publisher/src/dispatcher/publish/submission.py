"""What a submission is once checked: the message, where it goes, and what carries it."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, overload


@dataclass(frozen=True)
class Submission:
    """A task message ready to send (or sent): what ``submit_task`` and ``.delay()`` return.

    Like dispatcherd's return value, it also unpacks as ``(body, queue)``: the message and
    the channel it goes to (``body, queue = task.delay()``; ``submission[0]``).
    """

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
    durable: bool = False
    """Whether it goes to a durable queue (``brokers.pg_queue``): stored as a job, whose
    state ``get_job(uuid)`` reads, rather than sent by NOTIFY."""

    def __iter__(self) -> Iterator[Any]:
        """Yield :attr:`message` then :attr:`channel`: dispatcherd's ``(body, queue)``.

        Typed ``Any``: a type checker unpacks a class other than a tuple by its iterator's
        one item type, which cannot tell the body from the queue (a union would make each
        need narrowing). Index it (``submission[1]`` is a ``str``), or read
        :attr:`message` and :attr:`channel`, to keep the types.
        """
        return iter((self.message, self.channel))

    def __len__(self) -> int:
        """Two, as dispatcherd's ``(body, queue)`` tuple."""
        return 2

    @overload
    def __getitem__(self, index: Literal[0, -2]) -> Mapping[str, Any]: ...
    @overload
    def __getitem__(self, index: Literal[1, -1]) -> str: ...
    @overload
    def __getitem__(self, index: int) -> Mapping[str, Any] | str: ...
    def __getitem__(self, index: int) -> Mapping[str, Any] | str:
        """``[0]``: :attr:`message`; ``[1]``: :attr:`channel` (dispatcherd's ``(body, queue)``)."""
        return (self.message, self.channel)[index]


def make_submission(
    uuid: str,
    channel: str,
    message: Mapping[str, Any],
    payloads: tuple[str, ...],
    max_attempts: int | None,
    durable: bool,
) -> Submission:
    """Return ``Submission(uuid, channel, message, payloads, max_attempts, durable)``, faster.

    A frozen dataclass sets each field through ``object.__setattr__``; this fills them in
    directly, for the submission path, where that detour costs as much as checking the
    message. The result is the same object in every way (equal, hashable, still frozen).
    """
    submission = _new_object(Submission)
    fields = submission.__dict__
    fields["uuid"] = uuid
    fields["channel"] = channel
    fields["message"] = message
    fields["payloads"] = payloads
    fields["max_attempts"] = max_attempts
    fields["durable"] = durable
    return submission


_new_object: Final = object.__new__

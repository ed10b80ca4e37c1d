"""What :mod:`dispatcher.testing` records: the submissions it took, and the runs of tasks."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Final, Literal

from dispatcher.publish.submission import Submission
from dispatcher.schema import SIGNED_KEY

if TYPE_CHECKING:
    from dispatcher.testing.bound import InMemoryBoundTask

RunOutcome = Literal["ok", "error", "cancelled"]
"""How a run ended: returned (or raised ``DispatcherExit``), raised, or raised
``DispatcherCancel``."""

_BASE_KEYS: Final = frozenset({"task", "uuid", "args", "kwargs", "time_pub"})


def sent_message(submission: Submission) -> dict[str, Any]:
    """The task message that *submission*'s payloads carry, as a service would decode it.

    The payloads were written when the submission was made: what the caller does to its
    arguments afterwards (in a ``batch()`` block, or once recorded) does not show here.
    """
    payloads = submission.payloads
    text = (
        payloads[0]
        if len(payloads) == 1
        else "".join(json.loads(chunk)["payload"] for chunk in payloads)
    )
    decoded: dict[str, Any] = json.loads(text)
    if SIGNED_KEY in decoded:
        decoded = json.loads(decoded["body"])
    return decoded


@dataclass(frozen=True)
class CapturedTask:
    """One submission taken instead of being sent: the message exactly as it would have left."""

    submission: Submission
    """What ``submit_task()`` (or ``.delay()``...) returned for it."""
    in_transaction: bool = False
    """Whether it was submitted with ``connection=`` (or in a ``batch(connection)``)."""

    @property
    def task(self) -> str:
        """The task's name."""
        name: str = self.submission.message["task"]
        return name

    @property
    def args(self) -> list[Any]:
        """The positional arguments, as in the message."""
        return list(self.message.get("args", ()))

    @property
    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments, as in the message."""
        return dict(self.message.get("kwargs", {}))

    @property
    def queue(self) -> str:
        """The channel (or durable queue) it would have gone to."""
        return self.submission.channel

    @property
    def uuid(self) -> str:
        """The submission's uuid."""
        return self.submission.uuid

    @cached_property
    def message(self) -> Mapping[str, Any]:
        """The task message, as a service would receive it: decoded from :attr:`payloads`.

        So it holds the arguments as they were when submitted, through JSON.
        """
        return sent_message(self.submission)

    @property
    def payloads(self) -> tuple[str, ...]:
        """The text that would have been sent: JSON, signed or chunked as the config asks."""
        return self.submission.payloads

    @property
    def options(self) -> dict[str, Any]:
        """The submission's options: the message's other keys, and ``max_attempts``.

        That is ``timeout``, ``delay``, ``on_duplicate``, ``bind`` and ``extra``'s keys when
        set, and ``max_attempts`` when one was given.
        """
        options = {k: v for k, v in self.message.items() if k not in _BASE_KEYS}
        if self.submission.max_attempts is not None:
            options["max_attempts"] = self.submission.max_attempts
        return options


@dataclass
class TaskRun:
    """One run of a task in this process, and how it ended."""

    task: str
    """The task's name."""
    uuid: str
    """The uuid of its message."""
    message: Mapping[str, Any]
    """The message it ran from, as a service would have decoded it."""
    outcome: RunOutcome = "ok"
    """``ok``, ``error`` or ``cancelled``."""
    result: Any = None
    """What the task returned (``None`` unless ``ok``)."""
    error: BaseException | None = None
    """What it raised, when ``error`` or ``cancelled``."""
    bound: InMemoryBoundTask | None = None
    """The object a bound task received first, with the control commands it sent."""

    @property
    def ok(self) -> bool:
        """Tell whether the task ended without an error."""
        return self.outcome == "ok"

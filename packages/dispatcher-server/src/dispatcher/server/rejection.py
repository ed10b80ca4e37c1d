"""Refusing a received message: the exception every step of the intake raises."""

from __future__ import annotations

from typing import Any, Final, get_args

from dispatcher.schema.decoding import DecodeReason
from dispatcher.schema.log_fields import BROKER, EVENT, QUEUE, REASON, UUID
from dispatcher.schema.signing import SignatureReason

REJECTION_REASONS: Final[tuple[str, ...]] = (
    *get_args(DecodeReason),  # not_json, too_deep
    "not_object",
    "invalid_message",
    "invalid_chunk",
    "oversized",
    "chunk_expired",
    "chunk_evicted",
    "unknown_task",
    "invalid_control",
    "control_not_allowed",
    "control_unsupported",
    "overloaded",
    "internal_error",
    "unsigned",
    "replayed",
    *get_args(SignatureReason),
)
"""Every reason the service counts a rejected message under (``stats.rejected``): the
metrics export each from the start, at 0. A broker plug-in may count others."""


class Rejected(Exception):
    """A payload is refused; ``reason`` is the counter's key, the message says why."""

    def __init__(
        self,
        reason: str,
        detail: str,
        uuid: object = None,
        control: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.reason = reason
        self.uuid = uuid
        self.control = control
        """The refused control message, when it could be read: it gets an error reply."""


def rejection_fields(
    reason: str, uuid: str | None, broker: str | None, channel: str | None
) -> dict[str, object]:
    """The attributes of a log record saying that a message was rejected for *reason*.

    Its uuid if known, the broker and the channel or queue it came on (``None``: not known).
    """
    return {EVENT: "message_rejected", REASON: reason, UUID: uuid, BROKER: broker, QUEUE: channel}

"""Refusing a received message: the exception every step of the intake raises."""

from __future__ import annotations

from typing import Any


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

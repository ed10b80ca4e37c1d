"""What a control request returns."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from dispatcher.schema import DecodeError, DispatcherError, decode_json, matches_node_id, validator

logger = logging.getLogger("dispatcher.control")


@dataclass
class ControlResult:
    """The replies to one control request, and who did not answer."""

    command: str
    replies: list[dict[str, Any]] = field(default_factory=list)
    """One dict per answering service, each with its ``node_id``."""
    expected: int = 0
    """How many replies were waited for."""
    expected_nodes: list[str] = field(default_factory=list)
    """The node ids of the services found running (when they were looked up), as read from
    their connections' ``application_name``: cut short past
    :data:`~dispatcher.schema.MAX_WHOLE_NODE_ID_BYTES`."""
    skipped: list[str] = field(default_factory=list)
    """Why payloads on the reply channel were not taken as replies (not JSON, nested too
    deeply, not a control reply): anyone may NOTIFY that channel."""

    @property
    def missing(self) -> list[str]:
        """Node ids of services that were expected and did not answer."""
        answered = [str(reply.get("node_id")) for reply in self.replies]
        return [
            node
            for node in self.expected_nodes
            if not any(matches_node_id(node, reply) for reply in answered)
        ]

    def add(self, payload: str | bytes) -> None:
        """Take one payload from the reply channel: a reply, or a note in :attr:`skipped`."""
        try:
            self.replies.append(parse_reply(payload))
        except InvalidReply as exc:
            note = f"skipped a reply: {exc}"
            self.skipped.append(note)
            logger.warning("%s", note)

    @property
    def complete(self) -> bool:
        """Tell whether every expected service answered."""
        return len(self.replies) >= self.expected and not self.missing


class InvalidReply(DispatcherError, ValueError):
    """A payload on the reply channel that is not a control reply; the message says why."""


_MAX_REASON_CHARS = 300


def parse_reply(payload: str | bytes) -> dict[str, Any]:
    """Decode one reply (bounded in depth, like every message).

    :raises InvalidReply: when it is not JSON, too deep, or not a control reply.
    """
    try:
        reply = decode_json(payload)
    except DecodeError as exc:
        raise InvalidReply(str(exc)) from None
    checker = validator("control-reply")
    if not checker.is_valid(reply):
        problems = "; ".join(str(p) for p in checker.problems(reply))
        if len(problems) > _MAX_REASON_CHARS:
            problems = problems[:_MAX_REASON_CHARS] + "..."
        raise InvalidReply(f"not a control reply ({problems})")
    return reply  # type: ignore[no-any-return]

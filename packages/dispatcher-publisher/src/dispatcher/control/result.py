"""What a control request returns."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from dispatcher.schema import validator


@dataclass
class ControlResult:
    """The replies to one control request, and who did not answer."""

    command: str
    replies: list[dict[str, Any]] = field(default_factory=list)
    """One dict per answering service, each with its ``node_id``."""
    expected: int = 0
    """How many replies were waited for."""
    expected_nodes: list[str] = field(default_factory=list)
    """The node ids of the services found running (when they were looked up)."""

    @property
    def missing(self) -> list[str]:
        """Node ids of services that were expected and did not answer."""
        answered = [str(reply.get("node_id")) for reply in self.replies]
        return [node for node in self.expected_nodes if not _answered(node, answered)]

    @property
    def complete(self) -> bool:
        """Tell whether every expected service answered."""
        return len(self.replies) >= self.expected and not self.missing


_FULL_NAME_LENGTH = 44
"""Node ids longer than this are cut short in ``application_name`` (63 bytes in all)."""


def _answered(node: str, answered: list[str]) -> bool:
    if len(node) < _FULL_NAME_LENGTH:
        return node in answered
    return any(reply.startswith(node) for reply in answered)


def parse_reply(payload: str) -> dict[str, Any]:
    """Decode one reply; one that is not a valid reply becomes an ``error`` entry."""
    try:
        reply = json.loads(payload)
    except ValueError:
        return {"error": "reply is not JSON", "original": payload[:1000]}
    if not validator("control-reply").is_valid(reply):
        return {"error": "reply does not match the control-reply schema", "original": reply}
    return reply  # type: ignore[no-any-return]

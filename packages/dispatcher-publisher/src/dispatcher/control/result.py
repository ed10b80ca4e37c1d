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
        answered = {reply.get("node_id") for reply in self.replies}
        return [node for node in self.expected_nodes if node not in answered]

    @property
    def complete(self) -> bool:
        """Tell whether every expected service answered."""
        return len(self.replies) >= self.expected and not self.missing


def parse_reply(payload: str) -> dict[str, Any]:
    """Decode one reply; one that is not a valid reply becomes an ``error`` entry."""
    try:
        reply = json.loads(payload)
    except ValueError:
        return {"error": "reply is not JSON", "original": payload[:1000]}
    if not validator("control-reply").is_valid(reply):
        return {"error": "reply does not match the control-reply schema", "original": reply}
    return reply  # type: ignore[no-any-return]

"""Control messages from any broker: checked, counted, run, answered with the node id.

The intake detects a control message (a JSON object with the key ``control``) whatever
broker it came through and hands it here: this is the one place that validates it against
the ``control-message`` schema, applies the broker's allow-list and counts it.
"""

from __future__ import annotations

import logging
from typing import Any

from dispatcher.config import BrokerName
from dispatcher.schema import validator
from dispatcher.server.allowlist import ControlAllowList
from dispatcher.server.control import ControlCommands
from dispatcher.server.log_arguments import Excerpt
from dispatcher.server.log_records import get_logger
from dispatcher.server.log_text import MAX_REASON_CHARS
from dispatcher.server.ratelimit import RateLimitedLog
from dispatcher.server.rejection import rejection_fields
from dispatcher.server.stats import ServiceStats

logger = get_logger("dispatcher.control")


class ControlMessages:
    """Answers control messages for the service named *node_id*."""

    def __init__(
        self,
        commands: ControlCommands,
        allow_list: ControlAllowList,
        stats: ServiceStats,
        node_id: str,
    ) -> None:
        self.commands = commands
        self.node_id = node_id
        self._allow_list = allow_list
        self._stats = stats
        self._validator = validator("control-message")
        self._rejections = RateLimitedLog(logger, logging.WARNING)

    async def answer(
        self, message: dict[str, Any], where: str, broker: BrokerName | None
    ) -> dict[str, Any]:
        """Run a control message from *where* over *broker*; return the reply with ``node_id``.

        The message must match its schema and its command be allowed over *broker*. A
        command that walks the jobs held lets the event loop run meanwhile.
        """
        refusal: str | None
        if not self._validator.is_valid(message):
            problems = "; ".join(str(p) for p in self._validator.problems(message))
            reason, refusal = "invalid_control", f"invalid control message: {problems}"
        else:
            reason = "control_not_allowed"
            refusal = self._allow_list.refusal(message["control"], broker)
        if refusal is not None:
            self._stats.rejected[reason] += 1
            shown = Excerpt(refusal, MAX_REASON_CHARS)  # every field's problem, each cut short
            fields = None
            if logger.isEnabledFor(logging.WARNING):
                fields = rejection_fields(reason, None, broker, where)
            self._rejections.log("rejected control message on %s: %s", where, shown, extra=fields)
            reply = {"error": refusal}
        else:
            self._stats.control += 1
            reply = await self.commands.handle(message["control"], message.get("control_data"))
        return {**reply, "node_id": self.node_id}

    def refused(self, error: str) -> dict[str, Any]:
        """The reply to a control message refused before it could be run."""
        return {"error": error, "node_id": self.node_id}

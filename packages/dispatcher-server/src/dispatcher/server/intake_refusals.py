"""Count, log and settle the payloads the intake refuses.

One (rate-limited) log line with the reason and the uuid if there is one, a counter by
reason, and the delivery settled: rejected, or refused (a durable broker delivers it again).
"""

from __future__ import annotations

import logging

from dispatcher.server.log_arguments import Excerpt
from dispatcher.server.log_records import get_logger
from dispatcher.server.log_text import MAX_REASON_CHARS
from dispatcher.server.origin import Origin
from dispatcher.server.ratelimit import InternalErrorLog, RateLimitedLog
from dispatcher.server.rejection import Rejected, rejection_fields
from dispatcher.server.settlement import REFUSED, REJECTED, Settlements
from dispatcher.server.stats import ServiceStats

logger = get_logger("dispatcher.intake")


class Refusals:
    """Counts in *stats*, logs, and settles through *settlements*, what the intake refuses."""

    def __init__(self, stats: ServiceStats, settlements: Settlements) -> None:
        self._stats = stats
        self._settlements = settlements
        self._rejections = RateLimitedLog(logger, logging.WARNING)
        self._internal_errors = InternalErrorLog(logger)

    def refuse(self, rejected: Rejected, channel: str, origin: Origin) -> None:
        """Count and log *rejected*, and settle its delivery.

        As rejected; as refused when a limit of ``service.limits`` is reached
        (``overloaded``): a durable broker then delivers it again later, its attempt not
        counted, as it does for the scheduler's refusals.
        """
        comes_back = rejected.reason == "overloaded" and origin.receipt is not None
        outcome = REFUSED if comes_back else REJECTED
        if origin.stored_as is not None:
            rejected.uuid = origin.stored_as[0]  # the row's: what listings show
            self.reject(rejected, f" in queue {channel}", origin.broker, channel, outcome)
        else:
            where = f" on channel {channel}" if channel else ""
            self.reject(rejected, where, origin.broker, channel or None, outcome)
        self._settlements.origin(origin, outcome, str(rejected))

    def reject(
        self,
        rejected: Rejected,
        where: str,
        broker: str | None,
        channel: str | None,
        outcome: str = REJECTED,
    ) -> None:
        """Count and log *rejected*.

        *where* says where it came from (`` on channel c``): the *channel* or queue of
        *broker* (``None`` for neither); *outcome*, ``rejected``, or ``refused``: its
        durable broker delivers it again.
        """
        self._stats.rejected[rejected.reason] += 1
        uuid = rejected.uuid if isinstance(rejected.uuid, str) else None
        shown = "" if uuid is None else f" (uuid {uuid})"
        if outcome == REFUSED:
            shown += ", back to its queue"
        reason = Excerpt(rejected, MAX_REASON_CHARS)  # every field's problem, each cut short
        fields = None
        if logger.isEnabledFor(logging.WARNING):
            fields = rejection_fields(rejected.reason, uuid, broker, channel)
        self._rejections.log("%s message%s%s: %s", outcome, where, shown, reason, extra=fields)

    def lost(self, rejected: Rejected) -> None:
        """Count and log an incomplete chunked message dropped (evicted, or expired)."""
        self.reject(rejected, "", None, None)

    def internal_error(self, exc: Exception, channel: str, origin: Origin) -> None:
        """Count and report *exc*, a bug met taking a message on *channel*, and reject it."""
        self._stats.rejected["internal_error"] += 1
        self._internal_errors.report("intake", exc, f"a message on {channel}")
        self._settlements.origin(origin, REJECTED, "internal error")

"""How a settled delivery changes its job's row: the pure part of acknowledging.

Every :class:`~dispatcher.server.brokers.base.Settled` becomes one :class:`Ack`: which kind
of change (``done``, ``cancelled``, ``failed``, ``retry`` or ``requeue``), the outcome and
error text to record, the result, and for a retry the backoff before the next attempt.
Whether a retry is still allowed (``attempts < max_attempts``) is decided by the database,
from the row, in the same statement.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal, NamedTuple

from dispatcher.schema import Outcome
from dispatcher.server.brokers.base import Settled
from dispatcher.server.log_text import cut_middle

AckKind = Literal["done", "cancelled", "failed", "retry", "requeue"]

RETRIED: Final = frozenset(
    {Outcome.ERROR, Outcome.TIMEOUT, Outcome.WORKER_LOST, Outcome.KILLED, Outcome.MEMORY_EXCEEDED}
)
"""Outcomes that count as a failed attempt: retried after a backoff, until none is left."""

REFUSED_DELAY: Final = 1.0
"""Seconds a job the service refused (one of its ``service.limits`` was reached) waits before
it may be claimed again, by any service: time for the service to drain, instead of claiming
it back at once, again and again."""

MAX_ERROR_CHARS: Final = 32 * 1024
"""Longest error text (message and traceback) kept on a row; a longer one keeps its start and
its end (see :func:`~dispatcher.server.log_text.cut_middle`)."""

MAX_REASON_SHARE: Final = MAX_ERROR_CHARS // 4
"""Of :data:`MAX_ERROR_CHARS`, the most an error's message takes before its traceback (which
ends with the message again)."""

_KINDS: Final[dict[str, AckKind]] = {
    Outcome.OK: "done",
    Outcome.CANCELLED: "cancelled",
    "discarded": "cancelled",  # cannot happen once the gate is bypassed; never lose it
    "rejected": "failed",
    "refused": "requeue",
    "abandoned": "requeue",
}


@dataclass(frozen=True)
class RetryPolicy:
    """The backoff between attempts: ``backoff * 2**(attempt - 1)``, capped, +-jitter."""

    backoff: float = 1.0
    backoff_max: float = 300.0
    jitter: float = 0.1

    def delay(
        self, attempt: int, uniform: Callable[[float, float], float] = random.uniform
    ) -> float:
        """Seconds to wait after failed attempt number *attempt* (1 for the first)."""
        base: float = min(self.backoff_max, self.backoff * 2.0 ** min(max(attempt - 1, 0), 64))
        return max(0.0, base * (1.0 + uniform(-self.jitter, self.jitter)))


class Ack(NamedTuple):
    """One row's change, as the acknowledging statement takes it.

    A tuple: one is made for every job, and a frozen dataclass costs a microsecond more.
    """

    id: int
    attempts: int
    """The attempt it was claimed as."""
    claim: int
    """The claim number it was claimed with (the row's ``claims``): with :attr:`attempts`, the
    fence of the change, which applies only while the row is still under this claim."""
    kind: AckKind
    outcome: str
    error: str | None = None
    result: str | None = None
    """JSON text of the return value (``done`` only)."""
    delay: float = 0.0
    """Seconds before the next attempt (``retry``, and ``requeue`` of a refused job)."""
    uuid: str = ""
    """Its job's uuid, also in the fence: a failover that lost the row may have given its id,
    even with the same numbers, to another job."""


def parse_receipt(receipt: str) -> tuple[int, int, int, str] | None:
    """``"<id>:<attempts>:<claim>:<uuid>"`` as three numbers and a uuid (``None``: not ours)."""
    parts = receipt.split(":", 3)
    if len(parts) != 4:
        return None
    # A row inserted by hand may have a negative id or claim counter: still ours to settle.
    row, attempts, claim = (part.removeprefix("-") for part in parts[:3])
    if not (row.isdigit() and attempts.isdigit() and claim.isdigit()):
        return None
    if len(row) > 19 or len(attempts) > 10 or len(claim) > 10:
        return None
    return int(parts[0]), int(parts[1]), int(parts[2]), parts[3]


def receipt(row: int, attempts: int, claim: int, uuid: str) -> str:
    """The receipt of the claim of job *row* as attempt *attempts*, claim number *claim*.

    The claim number tells two claims with the same attempt apart (one made before a
    ``dispatcherctl retry`` reset the attempts, one after), even in the same service; the
    job's *uuid*, two jobs given the same row id (a failover lost the first one's row).
    """
    return f"{row}:{attempts}:{claim}:{uuid}"


def to_ack(settled: Settled, policy: RetryPolicy) -> Ack | None:
    """The change *settled* makes to its row; ``None`` for a receipt that is not ours."""
    parsed = parse_receipt(settled.receipt)
    if parsed is None:
        return None
    row, attempts, claim, uuid = parsed
    outcome = settled.outcome
    kind = _KINDS.get(outcome)
    if kind is None:  # error, timeout, worker_lost, killed, memory_exceeded (or unknown)
        error = _error(settled)
        if settled.final:
            return Ack(row, attempts, claim, "failed", outcome, error, uuid=uuid)
        delay = policy.delay(attempts)
        return Ack(row, attempts, claim, "retry", outcome, error, None, delay, uuid)
    if kind == "done":
        reason = clean_text(settled.reason)
        return Ack(row, attempts, claim, kind, outcome, reason, settled.result, uuid=uuid)
    reason = settled.reason
    if outcome == "discarded" and not reason:
        reason = "an identical job was active (on_duplicate)"
    delay = REFUSED_DELAY if outcome == "refused" else 0.0
    return Ack(row, attempts, claim, kind, outcome, clean_text(reason), None, delay, uuid)


def _error(settled: Settled) -> str:
    """The message, then the traceback: each cut apart, so that both keep start and end."""
    text = settled.reason or settled.outcome
    if settled.traceback:
        text = cut_middle(text, MAX_REASON_SHARE)
        room = MAX_ERROR_CHARS - len(text) - 1
        text = f"{text}\n{cut_middle(settled.traceback.rstrip(), room)}"
    return clean_text(text) or settled.outcome


def clean_text(text: str | None) -> str | None:
    """*text* as PostgreSQL takes it: no NUL, valid UTF-8, at most :data:`MAX_ERROR_CHARS`.

    A longer text keeps its start (an error's type and message) and its end (where it was
    raised), with a line between them saying how much was left out.
    """
    if text is None:
        return None
    text = text.replace("\x00", "\\x00")
    if not text.isascii():  # lone surrogates cannot be sent: escape them
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return cut_middle(text, MAX_ERROR_CHARS)

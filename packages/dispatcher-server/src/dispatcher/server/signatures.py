"""Signed messages on receipt: who signed, when, whether seen before, and what must be signed.

The intake hands every message (after chunk reassembly, before routing) to
:meth:`SignatureCheck.open`. A signed envelope is verified (``security.keys``,
``security.max_age``) and replaced by its body; an unsigned message passes unless its kind
is listed in ``security.require_signed``. An unsigned ``run`` command is refused too where
task messages must be signed: it submits the task it carries. Messages made inside the
service need no signature.

A durable broker's rows (``Origin.authenticated``) are guarded by the table's privileges:
an unsigned task row passes, and a signed one is not checked for its age or replay (its
retries would fail them). A control row is not: it must be signed where control messages
must be, and its signature is checked as a NOTIFY message's is.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Final

from dispatcher.config import Security
from dispatcher.schema import CHUNK_KEY, SIGNED_KEY, SignatureError, verify
from dispatcher.server.origin import Origin
from dispatcher.server.rejection import Rejected

MAX_REMEMBERED_SIGNATURES: Final = 100_000
"""Signatures remembered to refuse replays; past it, the oldest are forgotten (and counted)."""

Decode = Callable[[str], dict[str, Any]]
"""The intake's decoder: JSON text to an object, raising :class:`Rejected`."""


_ROWS_TOO: Final = ", stored as rows too: INSERT on the jobs table does not grant control commands"
"""Why an unsigned control row is refused where unsigned task rows are not."""


class ReplayGuard:
    """Remembers the signatures accepted within the last *max_age* seconds."""

    def __init__(self, max_age: float, capacity: int = MAX_REMEMBERED_SIGNATURES) -> None:
        self.max_age = max_age
        self.capacity = capacity
        self.forgotten = 0
        """Signatures dropped before their time to stay within *capacity*: each could be
        replayed until it grows stale."""
        self._seen: OrderedDict[str, float] = OrderedDict()  # signature -> signed_at

    def __len__(self) -> int:
        return len(self._seen)

    def first_time(self, signature: str, signed_at: float, now: float) -> bool:
        """Remember *signature*; tell whether it was new (``False``: a replay)."""
        seen = self._seen
        horizon = now - self.max_age
        while seen and next(iter(seen.values())) < horizon:
            seen.popitem(last=False)  # stale now: a replay would be refused as such
        if signature in seen:
            return False
        if len(seen) >= self.capacity:
            seen.popitem(last=False)
            self.forgotten += 1
        seen[signature] = signed_at
        return True


class SignatureCheck:
    """Applies the ``security`` settings to received messages."""

    def __init__(self, security: Security, clock: Callable[[], float] = time.time) -> None:
        self._security = security
        self._secrets = security.secrets
        self._required = frozenset(security.require_signed)
        self._clock = clock
        self.replays = ReplayGuard(security.max_age)

    def open(
        self, payload: str, message: dict[str, Any], origin: Origin, decode: Decode
    ) -> tuple[str, dict[str, Any]]:
        """Return the text and object to act on, checking signatures.

        That is the verified body of a signed envelope, else the message itself when it may
        travel unsigned.

        :raises Rejected: with reason ``unsigned``, ``invalid_signed_envelope``,
            ``unknown_key``, ``bad_signature``, ``stale_signature`` or ``replayed``.
        """
        if SIGNED_KEY in message:
            return self._open_signed(message, decode, stored=_stored_row(origin))
        if self._required and origin.broker is not None:
            kind = "control" if "control" in message else "task"
            if kind in self._required and not (origin.authenticated and kind == "task"):
                rows = _ROWS_TOO if origin.authenticated else ""
                raise Rejected(
                    "unsigned",
                    f"unsigned {kind} message over {origin.broker}: this service requires "
                    f"{kind} messages to be signed (security.require_signed){rows}",
                    message.get("uuid"),
                    control=message if kind == "control" else None,
                )
            if "task" in self._required and _submits_a_task(message, origin):
                raise Rejected(
                    "unsigned",
                    f"unsigned run command over {origin.broker}: it submits a task, and this "
                    "service requires task messages to be signed (security.require_signed)",
                    control=message,
                )
        return payload, message

    def _open_signed(
        self, envelope: dict[str, Any], decode: Decode, stored: bool
    ) -> tuple[str, dict[str, Any]]:
        """The verified body of *envelope*; of a *stored* task row, of any age and seen or not.

        A stored row within *max_age* is still remembered, so that the same envelope sent
        again by NOTIFY (read from the table) is refused as a replay. A stored control
        command is checked as one sent by NOTIFY: it acts once, now, and a signed command
        read off a channel must not be stored to run later, or again.
        """
        now = self._clock()
        max_age = self._security.max_age
        try:
            verified = verify(envelope, self._secrets, now, math.inf if stored else max_age)
        except SignatureError as exc:
            raise Rejected(exc.reason, str(exc), control=_control_in(envelope, decode)) from None
        if not stored and not self.replays.first_time(verified.signature, verified.signed_at, now):
            raise Rejected(
                "replayed",
                f"replayed message: signature {verified.signature[:16]}... was already received",
                control=_control_in(envelope, decode),
            )
        body = decode(verified.body)
        if SIGNED_KEY in body or CHUNK_KEY in body:
            raise Rejected(
                "invalid_signed_envelope",
                "the body of a signed envelope must be a task or control message, "
                "not another envelope",
            )
        if stored and "control" in body:
            return self._open_signed(envelope, decode, stored=False)
        if stored and now - verified.signed_at <= max_age:
            self.replays.first_time(verified.signature, verified.signed_at, now)
        return verified.body, body

    def summary(self) -> dict[str, Any]:
        """What the ``status`` command shows: key ids (never secrets), rules, replay memory."""
        security = self._security
        return {
            "keys": [key.id for key in security.keys],
            "require_signed": list(security.require_signed),
            "max_age": security.max_age,
            "remembered": len(self.replays),
            "forgotten": self.replays.forgotten,
        }


def _submits_a_task(message: dict[str, Any], origin: Origin) -> bool:
    """Whether the control *message* is a ``run`` command that needs a task's signature.

    Not a durable row's: a role that may store it may store the task's row itself.
    """
    return message.get("control") == "run" and not origin.authenticated


def _stored_row(origin: Origin) -> bool:
    """Whether *origin* delivers a row of a durable broker that vouches for who wrote it.

    Such a row is written once, by a role the table's privileges let in (replaying it takes
    an INSERT), and delivered again on each retry, maybe long after it was signed: its
    signature is verified, but neither its age nor whether it was seen before.
    """
    return origin.receipt is not None and origin.authenticated


def _control_in(envelope: dict[str, Any], decode: Decode) -> dict[str, Any] | None:
    """The control message in a refused envelope's body, if it can be read (for a reply)."""
    body = envelope.get("body")
    if not isinstance(body, str):
        return None
    try:
        message = decode(body)
    except Rejected:
        return None
    return message if "control" in message else None

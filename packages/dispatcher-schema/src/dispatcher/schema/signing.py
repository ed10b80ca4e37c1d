"""Signed envelopes (schema ``signed-envelope``): HMAC-SHA256 over a message's JSON text.

A publisher wraps the JSON text of a task or control message with :func:`sign`; a service
checks it with :func:`verify` and then handles the body as if it had arrived alone. The
same rule is implemented in SQL (``dispatcher_submit``) and in the Node.js example::

    signature = hex(HMAC-SHA256(key=secret, msg=signed_at + "." + body))   # UTF-8 bytes

Signing proves who sent a message and that it was not changed; it hides nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from dispatcher.schema.errors import DispatcherError
from dispatcher.schema.validation import validator
from dispatcher.schema.wire import SIGNED_KEY, SIGNED_VERSION

__all__ = [
    "KEY_ID_PATTERN",
    "SIGNED_KEY",
    "SIGNED_VERSION",
    "SignatureError",
    "SignatureReason",
    "VerifiedMessage",
    "sign",
    "signature_of",
    "verify",
]

KEY_ID_PATTERN: Final = re.compile(r"^[A-Za-z0-9_.-]{1,64}\Z")
"""What a key id may be: 1-64 ASCII letters, digits, ``_ . -`` (as in the schema)."""

SignatureReason = Literal[
    "invalid_signed_envelope", "unknown_key", "bad_signature", "stale_signature"
]
"""Why :func:`verify` refused an envelope (the service counts refusals under these names)."""


class SignatureError(DispatcherError, ValueError):
    """A signed envelope is refused; :attr:`reason` says which check failed."""

    def __init__(self, reason: SignatureReason, message: str) -> None:
        super().__init__(message)
        self.reason: SignatureReason = reason
        """The failed check, e.g. ``bad_signature``."""


@dataclass(frozen=True)
class VerifiedMessage:
    """What :func:`verify` found in a good envelope."""

    body: str
    """The JSON text of the message that was signed."""
    key_id: str
    """The key it was signed with."""
    signed_at: float
    """When it was signed, in seconds since the epoch (the publisher's clock)."""
    signature: str
    """The signature, unique per message: what a service remembers to refuse replays."""


def signature_of(body: str, signed_at: str, secret: bytes) -> str:
    """Return the hex HMAC-SHA256 of ``signed_at + "." + body`` keyed with *secret*."""
    data = f"{signed_at}.{body}".encode()
    return hmac.new(secret, data, hashlib.sha256).hexdigest()


def sign(body: str, key_id: str, secret: bytes, now: float) -> str:
    """Wrap the JSON text *body* in a signed envelope; return the envelope's JSON text.

    *now* is the signing time in seconds since the epoch (``time.time()``). The result is
    ASCII (non-ASCII characters of *body* are escaped), like every message the SDK sends.
    """
    signed_at = f"{now:.6f}"
    envelope = {
        SIGNED_KEY: SIGNED_VERSION,
        "key_id": key_id,
        "signed_at": signed_at,
        "signature": signature_of(body, signed_at, secret),
        "body": body,
    }
    return json.dumps(envelope, separators=(",", ":"))


def verify(
    envelope: Mapping[str, Any], keys: Mapping[str, bytes], now: float, max_age: float
) -> VerifiedMessage:
    """Check a decoded signed envelope against *keys* (key id to secret) at time *now*.

    The checks, in order: the envelope matches its schema, its key is one of *keys*, the
    signature is right (compared in constant time), and ``signed_at`` is at most *max_age*
    seconds away from *now*, in the past or the future. Remembering signatures to refuse
    replays is the caller's job.

    :raises SignatureError: naming the first check that failed.
    """
    checker = validator("signed-envelope")
    if not checker.is_valid(envelope):
        problems = "; ".join(str(p) for p in checker.problems(envelope))
        raise SignatureError("invalid_signed_envelope", f"invalid signed envelope: {problems}")
    key_id: str = envelope["key_id"]
    secret = keys.get(key_id)
    if secret is None:
        raise SignatureError("unknown_key", f"signed with unknown key {key_id!r}")
    body: str = envelope["body"]
    signed_at: str = envelope["signed_at"]
    try:
        expected = signature_of(body, signed_at, secret)
    except UnicodeEncodeError:  # a lone surrogate (\ud800): no UTF-8 text was ever signed
        raise SignatureError(
            "invalid_signed_envelope",
            "invalid signed envelope: body: holds a lone surrogate, which no UTF-8 text has",
        ) from None
    if not hmac.compare_digest(expected, envelope["signature"]):
        raise SignatureError("bad_signature", f"bad signature (key {key_id!r})")
    age = now - float(signed_at)
    if abs(age) > max_age:
        when = f"{age:.1f} s ago" if age > 0 else f"{-age:.1f} s in the future"
        raise SignatureError(
            "stale_signature",
            f"signature out of date: signed {when}, more than max_age ({max_age:g} s) away",
        )
    return VerifiedMessage(body, key_id, float(signed_at), envelope["signature"])

"""Facts of the wire shared by publishers and services: size limits and name rules."""

import re
from typing import Final

MAX_NOTIFY_PAYLOAD_BYTES: Final = 7999
"""Largest NOTIFY payload PostgreSQL accepts, in UTF-8 bytes (it refuses 8000 or more).

A message whose JSON text is longer travels as chunk envelopes of at most this size.
"""

MAX_MESSAGE_BYTES: Final = 8 * 1024 * 1024
"""Largest message (its JSON text in UTF-8 bytes) a publisher sends or a service accepts."""

MAX_NESTING_DEPTH: Final = 64
"""Deepest nesting of arrays and objects in a message; the message object is level 1.

A task's ``args`` and ``kwargs`` may thus nest 63 levels. Deeper text is refused (reason
``too_deep``) before anything acts on it, so that no decoder, validator or encoder along
the way can run out of stack.
"""

MAX_CHANNEL_NAME_BYTES: Final = 63
"""Longest channel name PostgreSQL keeps whole (NAMEDATALEN - 1); longer names are cut."""

CHANNEL_NAME_PATTERN: Final = re.compile(r"^[A-Za-z0-9_.:-]{1,63}$")
"""What a channel name may be: 1-63 bytes of ASCII letters, digits, ``_ . - :``.

The same rule as ``$defs/channel_name`` in the schemas (a test keeps them equal).
"""

CHANNEL_NAME_RULE: Final = "1-63 bytes of ASCII letters, digits, '_', '.', '-' or ':'"
""":data:`CHANNEL_NAME_PATTERN` in words, for error messages."""


def is_valid_channel_name(name: object) -> bool:
    """Tell whether *name* is a string that is a valid channel name."""
    return isinstance(name, str) and CHANNEL_NAME_PATTERN.match(name) is not None

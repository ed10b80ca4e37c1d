"""Size limits of the wire, shared by publishers and services."""

from typing import Final

MAX_NOTIFY_PAYLOAD_BYTES: Final = 7999
"""Largest NOTIFY payload PostgreSQL accepts, in UTF-8 bytes (it refuses 8000 or more).

A message whose JSON text is longer travels as chunk envelopes of at most this size.
"""

MAX_CHANNEL_NAME_BYTES: Final = 63
"""Longest channel name PostgreSQL keeps whole (NAMEDATALEN - 1); longer names are cut."""

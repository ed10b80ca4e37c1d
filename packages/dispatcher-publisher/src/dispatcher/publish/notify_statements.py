"""The statements that send NOTIFYs: one, or any number in order in one statement."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

NOTIFY_MANY: Final = (
    "SELECT pg_catalog.count(pg_catalog.pg_notify(c, p))"
    " FROM ROWS FROM (pg_catalog.unnest(%b::text[]), pg_catalog.unnest(%b::text[])) AS m(c, p)"
)
"""One statement that sends any number of notifications, in order (so, atomically).

The arrays travel in binary format: parsing them as text costs the server ten times more.
"""

NOTIFY_ONE: Final = "SELECT pg_catalog.pg_notify(%s, %s)"
"""One notification: for a single payload, half the cost of :data:`NOTIFY_MANY` on both
sides (no arrays to build, send and unnest)."""

NOTIFY_LINES: Final = (
    "SELECT pg_catalog.count(pg_catalog.pg_notify(c, p)) FROM ROWS FROM ("
    "pg_catalog.unnest(pg_catalog.string_to_array(%s::text, E'\\n')),"
    " pg_catalog.unnest(pg_catalog.string_to_array(%s::text, E'\\n'))) AS m(c, p)"
)
""":data:`NOTIFY_MANY` with the channels and the payloads each as one text, a line apiece.

For payloads without a line break, which every JSON text the SDK writes is (compact, its
control characters escaped): two texts cost both sides a fraction of two arrays of
thousands of elements (about a sixth of the client's time and two thirds of the wall time
for 50,000 messages).
"""


def notify_statement(messages: Sequence[tuple[str, str]]) -> tuple[str, Sequence[Any]]:
    """The statement and parameters that NOTIFY each ``(channel, payload)`` of *messages*.

    One message takes :data:`NOTIFY_ONE`; more take one statement (so delivered in order,
    and all or none): :data:`NOTIFY_LINES` when no channel or payload holds a line break,
    else :data:`NOTIFY_MANY`.
    """
    if len(messages) == 1:
        return NOTIFY_ONE, messages[0]
    channels = [channel for channel, _ in messages]
    payloads = [text for _, text in messages]
    channel_lines, payload_lines = "\n".join(channels), "\n".join(payloads)
    breaks = len(messages) - 1  # one between each two lines, and no other
    if channel_lines.count("\n") == breaks and payload_lines.count("\n") == breaks:
        return NOTIFY_LINES, (channel_lines, payload_lines)
    return NOTIFY_MANY, (channels, payloads)

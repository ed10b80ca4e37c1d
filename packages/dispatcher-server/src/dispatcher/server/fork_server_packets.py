"""The framing of the fork server's messages: one packet each, or parts when too long.

The fork server's socket is a ``SOCK_SEQPACKET`` one, whose packets have a bounded size
(:data:`MAX_MESSAGE`); a longer message (the import report of thousands of tasks) goes in
parts (:func:`packets`), joined on the other side by a :class:`PacketJoiner`.
"""

from __future__ import annotations

import contextlib
import json
import socket
from typing import Any, Final

MAX_MESSAGE: Final = 1 << 16
"""Longest packet on the fork server's socket; a longer message goes in several
(:func:`packets`)."""

_PART: Final = b"+"
"""First byte of a packet that holds a part of a message, more parts following."""
_LAST_PART: Final = b"."
"""First byte of the packet holding the last part of a message sent in parts (a message
sent whole is a JSON object: it starts with ``{``)."""


def packets(data: bytes) -> list[bytes]:
    """The packets that carry the message *data*: itself, or its parts when too long for one.

    Each part is marked by its first byte (:data:`_PART`, :data:`_LAST_PART`); see
    :class:`PacketJoiner`.
    """
    if len(data) <= MAX_MESSAGE:
        return [data]
    size = MAX_MESSAGE - 1
    parts = [data[start : start + size] for start in range(0, len(data), size)]
    return [_PART + part for part in parts[:-1]] + [_LAST_PART + parts[-1]]


class PacketJoiner:
    """Joins the packets of one socket (see :func:`packets`) into whole messages."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def add(self, packet: bytes) -> bytes | None:
        """The message *packet* is, or completes; ``None`` when more parts must come."""
        marker = packet[:1]
        if marker == _PART:
            self._parts.append(packet[1:])
            return None
        if marker == _LAST_PART:
            self._parts.append(packet[1:])
            whole = b"".join(self._parts)
            self._parts = []
            return whole
        self._parts = []  # (parts without their last one cannot be: the sender died?)
        return packet


def send_message(
    control: socket.socket, message: dict[str, Any], fds: list[int] | None = None
) -> None:
    """Send *message* (a JSON object) on *control*, with *fds* attached to its last packet."""
    *parts, last = packets(json.dumps(message, separators=(",", ":")).encode())
    with contextlib.suppress(OSError):  # the service has gone: we are about to exit too
        for part in parts:  # (the socket blocks: the service reads them as they come)
            control.send(part)
        socket.send_fds(control, [last], fds or [])

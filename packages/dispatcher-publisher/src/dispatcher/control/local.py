"""Control over a service's local unix socket (``brokers.socket``): no database involved.

The socket speaks dispatcherd's format, both ways, so this client talks to dispatcher
services and to dispatcherd's alike:

- one payload per line (UTF-8, each ending in a newline), over one connection per request;
- a message longer than :data:`~dispatcher.schema.chunks.SOCKET_CHUNK_BYTES` (1 kB) is cut
  into chunk envelopes of at most that size, one per line;
- the service answers on the same connection: one line per reply, or the reply's chunk
  envelopes, one per line, when it is over 1 kB; they are joined here, in any order.

The control functions of :mod:`dispatcher.control` reach the socket through its broker
(:class:`~dispatcher.publish.socket.SocketPublisher`), with the payloads
:func:`control_payloads` makes; :func:`socket_request` sends one message and returns the
text of its reply.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable
from typing import Any

from dispatcher.control.reply_parsing import InvalidReply, ReplyChunks
from dispatcher.publish.brokers import PublishBroker
from dispatcher.publish.errors import BrokerUnavailable
from dispatcher.publish.socket import (
    SocketPublisher,
    connected,
    lines_before_close,
    read_lines,
    send_message,
)
from dispatcher.schema import MAX_NOTIFY_PAYLOAD_BYTES, split_message
from dispatcher.schema.chunks import socket_lines

__all__ = [
    "asocket_request",
    "control_payloads",
    "socket_request",
]


def socket_request(
    path: str, message: dict[str, Any], timeout: float, payload: str | None = None
) -> str | None:
    """Send one control message; return the text of its reply, or ``None``.

    A reply that comes in chunk envelopes is returned joined. ``None`` means no reply was
    asked for (no ``reply_to``) or none came whole within *timeout*. *payload* is the text
    to send for *message* (such as its signed envelope); by default the message's JSON text.
    A line that is not a reply (nor a valid chunk envelope) is returned as it is, for the
    caller to judge.

    :raises BrokerUnavailable: when nothing listens at *path*, or a line of the reply is
        over :data:`~dispatcher.schema.MAX_MESSAGE_BYTES` bytes.
    """
    deadline = time.monotonic() + timeout
    chunks = ReplyChunks()
    with connected(path, timeout) as sock:
        lines: Iterable[str]
        try:
            send_message(sock, path, payload or json.dumps(message))
        except BrokerUnavailable:
            # A service with too many clients says so (an error reply) and closes.
            lines = lines_before_close(sock, path) if message.get("reply_to") else []
            if not lines:
                raise
        else:
            if not message.get("reply_to"):
                return None
            lines = read_lines(sock, path, deadline)
        for line in lines:
            try:
                whole = chunks.join(line)
            except InvalidReply:
                return line
            if whole is not None:
                return str(whole)
    return None


async def asocket_request(
    path: str, message: dict[str, Any], timeout: float, payload: str | None = None
) -> str | None:
    """:func:`socket_request` for asyncio code (run in a thread)."""
    return await asyncio.to_thread(socket_request, path, message, timeout, payload)


def control_payloads(text: str, broker: PublishBroker) -> list[str]:
    """The payloads that carry the control message *text* through *broker*.

    Over the socket, dispatcherd's socket chunks (beyond 1 kB); elsewhere, the text whole,
    or its chunk envelopes when it is over one NOTIFY.
    """
    if isinstance(broker, SocketPublisher):
        return socket_lines(text)
    if len(text.encode("utf-8")) <= MAX_NOTIFY_PAYLOAD_BYTES:
        return [text]
    return split_message(text)

"""Control over a service's local unix socket (``brokers.socket``): no database involved."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

from dispatcher.publish.errors import BrokerUnavailable
from dispatcher.schema import MAX_MESSAGE_BYTES


def socket_request(
    path: str, message: dict[str, Any], timeout: float, payload: str | None = None
) -> str | None:
    """Send one control message; return the reply line, or ``None``.

    ``None`` means no reply was asked for (no ``reply_to``) or none came within *timeout*.
    *payload* is the text to send for *message* (such as its signed envelope); by default
    the message's JSON text.

    :raises BrokerUnavailable: when nothing listens at *path*.
    """
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as exc:
            raise BrokerUnavailable(
                f"cannot connect to the service's socket {path}: {exc.strerror or exc}"
            ) from None
        sock.sendall(((payload or json.dumps(message)) + "\n").encode())
        if not message.get("reply_to"):
            return None
        received = bytearray()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            sock.settimeout(remaining)
            try:
                data = sock.recv(1 << 16)
            except TimeoutError:
                return None
            if not data:
                return None
            end = data.find(b"\n")
            received += data if end < 0 else data[:end]
            if len(received) > MAX_MESSAGE_BYTES:
                raise BrokerUnavailable(
                    f"the reply on the service's socket {path} is over {MAX_MESSAGE_BYTES} bytes"
                )
            if end >= 0:  # bytes that are not UTF-8 become U+FFFD, never an exception
                return received.decode("utf-8", errors="replace")


async def asocket_request(
    path: str, message: dict[str, Any], timeout: float, payload: str | None = None
) -> str | None:
    """:func:`socket_request` for asyncio code (run in a thread)."""
    return await asyncio.to_thread(socket_request, path, message, timeout, payload)

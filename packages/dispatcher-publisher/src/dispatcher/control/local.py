"""Control over a service's local unix socket (``brokers.socket``): no database involved."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

from dispatcher.publish.errors import BrokerUnavailable


def socket_request(path: str, message: dict[str, Any], timeout: float) -> str | None:
    """Send one control message; return the reply line, or ``None``.

    ``None`` means no reply was asked for (no ``reply_to``) or none came within *timeout*.

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
        sock.sendall((json.dumps(message) + "\n").encode())
        if not message.get("reply_to"):
            return None
        received = b""
        while b"\n" not in received:
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
            received += data
        return received.split(b"\n", 1)[0].decode()


async def asocket_request(path: str, message: dict[str, Any], timeout: float) -> str | None:
    """:func:`socket_request` for asyncio code (run in a thread)."""
    return await asyncio.to_thread(socket_request, path, message, timeout)

"""The socket broker's publishing side: lines over a service's local unix socket.

No database is involved: ``dispatcherctl`` on the service's host works while the database is
down. Each connection carries newline-delimited payloads; a control message with a
``reply_to`` gets its reply back on the same connection, as one line.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Mapping, Sequence
from typing import Any

from dispatcher.config import Settings
from dispatcher.publish.brokers import Outgoing, ReplyCollector
from dispatcher.publish.errors import BrokerUnavailable
from dispatcher.schema import MAX_MESSAGE_BYTES

SEND_TIMEOUT = 5.0
"""Seconds a send over the socket may take."""


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


def send_lines(path: str, payloads: Sequence[str], timeout: float = SEND_TIMEOUT) -> None:
    """Send *payloads* as lines over one connection to the socket at *path*.

    :raises BrokerUnavailable: when nothing listens at *path*, or the send fails.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
            sock.sendall("".join(payload + "\n" for payload in payloads).encode())
        except OSError as exc:
            raise BrokerUnavailable(
                f"cannot send to the service's socket {path}: {exc.strerror or exc}"
            ) from None


class SocketPublisher:
    """The publishing side of ``brokers.socket``: one connection per send or request."""

    name = "socket"
    default_queue: str | None = "socket"
    """The socket has no queues: tasks sent over it are named as coming from ``socket``."""
    queues: tuple[str, ...] = ()

    def __init__(self, path: str) -> None:
        self.path = path

    def send(self, messages: Sequence[Outgoing], connection: object | None = None) -> None:
        """Send the payloads of *messages* as lines (the queue plays no part here)."""
        if connection is not None:
            raise TypeError("the socket broker cannot send inside a database transaction")
        send_lines(self.path, [payload for _, payload in messages])

    async def asend(self, messages: Sequence[Outgoing], connection: object | None = None) -> None:
        """:meth:`send` for asyncio code (run in a thread)."""
        await asyncio.to_thread(self.send, messages, connection)

    def control_with_reply(
        self,
        text: str,
        reply_to: str,
        replies: ReplyCollector,
        *,
        queue: str | None,
        expected_replies: int | None,
        timeout: float,
    ) -> None:
        """Send a control message; its one service answers on the same connection."""
        replies.expected = 1 if expected_replies is None else expected_replies
        message = {"reply_to": reply_to}
        line = socket_request(self.path, message, timeout, payload=text)
        if line is not None:
            replies.add(line)

    async def acontrol_with_reply(
        self,
        text: str,
        reply_to: str,
        replies: ReplyCollector,
        *,
        queue: str | None,
        expected_replies: int | None,
        timeout: float,
    ) -> None:
        """:meth:`control_with_reply` for asyncio code (run in a thread)."""
        await asyncio.to_thread(
            lambda: self.control_with_reply(
                text,
                reply_to,
                replies,
                queue=queue,
                expected_replies=expected_replies,
                timeout=timeout,
            )
        )


def create(options: Mapping[str, Any], settings: Settings) -> SocketPublisher:
    """The factory of the socket broker's publishing side."""
    section = settings.brokers.socket
    assert section is not None, "the socket factory is only called when it is configured"
    return SocketPublisher(section.path)

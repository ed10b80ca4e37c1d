"""The socket broker's publishing side: lines over a service's local unix socket.

No database is involved: ``dispatcherctl`` on the service's host works while the database is
down. The socket speaks dispatcherd's format, both ways: one payload per line, over one
connection per request; a control message over 1 kB goes in chunk envelopes, one per line;
the service answers on the same connection, one line per reply, or the reply's chunk
envelopes when it is over 1 kB (the reply collector joins them). Where Python has no Unix
sockets (Windows), a send through it fails, saying to use pg_notify.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final

from dispatcher.config import Settings
from dispatcher.publish.brokers import Outgoing, ReplyCollector
from dispatcher.publish.errors import BrokerUnavailable
from dispatcher.schema import MAX_MESSAGE_BYTES, InvalidArgumentType
from dispatcher.schema.chunks import socket_lines

SEND_TIMEOUT = 5.0
"""Seconds a send over the socket may take."""


REFUSAL_WAIT = 1.0
"""Seconds spent reading the reason of a service that closed the connection before a send."""

_READ_SIZE = 1 << 16


NO_UNIX_SOCKETS: Final = (
    "this platform has no Unix sockets (Windows): the socket broker serves the service's own"
    " host only; send control commands through pg_notify instead"
    " (publish.default_control_broker: pg_notify)"
)
"""Why a send through ``brokers.socket`` fails where Python has no ``socket.AF_UNIX``."""


def unix_sockets() -> bool:
    """Whether this platform has Unix sockets (``socket.AF_UNIX``: not on Windows)."""
    return hasattr(socket, "AF_UNIX")


def _unix_socket() -> socket.socket:
    """A new Unix stream socket.

    :raises BrokerUnavailable: where there are none (:data:`NO_UNIX_SOCKETS`).
    """
    if sys.platform == "win32" or not unix_sockets():
        raise BrokerUnavailable(NO_UNIX_SOCKETS)
    return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)


class connected:
    """A connection to the service's socket at *path*, with *timeout* on each operation.

    :raises BrokerUnavailable: on entry, when nothing listens at *path*.
    """

    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self.sock = _unix_socket()
        self.sock.settimeout(timeout)

    def __enter__(self) -> socket.socket:
        try:
            self.sock.connect(self.path)
        except OSError as exc:
            self.sock.close()
            raise BrokerUnavailable(
                f"cannot connect to the service's socket {self.path}: {exc.strerror or exc}"
            ) from None
        return self.sock

    def __exit__(self, *exc_info: object) -> None:
        self.sock.close()


def send_message(sock: socket.socket, path: str, text: str) -> None:
    """Send the message *text*, in dispatcherd's socket chunks when it is over 1 kB.

    :raises BrokerUnavailable: when the send fails.
    """
    try:
        sock.sendall("".join(line + "\n" for line in socket_lines(text)).encode())
    except OSError as exc:
        raise BrokerUnavailable(
            f"cannot send to the service's socket {path}: {exc.strerror or exc}"
        ) from None


def read_lines(sock: socket.socket, path: str, deadline: float) -> Iterator[str]:
    """The lines the service sends, until it closes the connection or *deadline* passes.

    Bytes that are not UTF-8 become U+FFFD, never an exception; empty lines are left out.

    :raises BrokerUnavailable: when the connection fails, or a line is over
        :data:`~dispatcher.schema.MAX_MESSAGE_BYTES` bytes.
    """
    pending = bytearray()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        sock.settimeout(remaining)
        try:
            data = sock.recv(_READ_SIZE)
        except TimeoutError:
            return
        except OSError as exc:
            raise BrokerUnavailable(
                f"lost the connection to the service's socket {path}: {exc.strerror or exc}"
            ) from None
        if not data:
            return
        search = len(pending)
        pending += data
        start = 0
        while (end := pending.find(b"\n", search)) >= 0:
            if end - start > MAX_MESSAGE_BYTES:
                break
            line = bytes(pending[start:end])
            start = search = end + 1
            if line.strip():
                yield line.decode("utf-8", errors="replace")
        del pending[:start]
        if len(pending) > MAX_MESSAGE_BYTES:
            raise BrokerUnavailable(
                f"a reply line on the service's socket {path} is over {MAX_MESSAGE_BYTES} bytes"
            )


def lines_before_close(sock: socket.socket, path: str) -> list[str]:
    """The lines a service sent before closing the connection, read after a send failed.

    A service serving too many socket clients already answers one more with an error reply
    saying so, then closes the connection: the send fails, the reply is there to read.
    """
    lines: list[str] = []
    with contextlib.suppress(BrokerUnavailable):
        lines.extend(read_lines(sock, path, time.monotonic() + REFUSAL_WAIT))
    return lines


def send_lines(path: str, payloads: Sequence[str], timeout: float = SEND_TIMEOUT) -> None:
    """Send *payloads* as lines over one connection to the socket at *path*.

    :raises BrokerUnavailable: when nothing listens at *path*, or the send fails.
    """
    with _unix_socket() as sock:
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
            raise InvalidArgumentType("the socket broker cannot send inside a database transaction")
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
        """Send the control message *text*; read its replies from the same connection.

        One service listens on a socket: one reply is waited for unless *expected_replies*
        says otherwise. Lines (replies, or the chunk envelopes of a long one, which
        *replies* joins) are read until that many replies have come, the service closes
        the connection, or *timeout* seconds have passed.

        :raises BrokerUnavailable: when nothing listens at the socket's path, or a line of
            the reply is over :data:`~dispatcher.schema.MAX_MESSAGE_BYTES` bytes.
        """
        replies.expected = 1 if expected_replies is None else expected_replies
        deadline = time.monotonic() + timeout
        with connected(self.path, timeout) as sock:
            try:
                send_message(sock, self.path, text)
            except BrokerUnavailable:
                said = lines_before_close(sock, self.path)
                if not said:
                    raise
                for line in said:
                    replies.add(line)
                return
            for line in read_lines(sock, self.path, deadline):
                replies.add(line)
                if len(replies.replies) >= replies.expected:
                    return

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

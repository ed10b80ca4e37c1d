"""Stand-ins for running services, for the tests of the control client.

A :class:`FakeService` LISTENs on a channel over a connection named like a service's (so the
client finds it among the services listening on that channel) and answers each control message it receives
on the message's ``reply_to`` channel; a :class:`FakeSocketService` answers one request on a
unix socket, as a service's socket broker does.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from dispatcher.schema import service_application_name

Answer = Callable[[str, dict[str, Any]], list[str]]
"""What a fake service NOTIFYs on ``reply_to``, given its node id and the message."""


def echo(node_id: str, message: dict[str, Any]) -> list[str]:
    """Answer with one reply that names the node and repeats the command and its data."""
    reply = {"node_id": node_id, "control": message["control"]}
    return [json.dumps(reply | {"control_data": message.get("control_data", {})})]


def late(node_id: str, message: dict[str, Any]) -> list[str]:
    """Answer as :func:`echo` does, a moment later: the other services answer first."""
    time.sleep(0.5)
    return echo(node_id, message)


def silent(node_id: str, message: dict[str, Any]) -> list[str]:
    """Answer nothing, like a service too busy to reply in time."""
    return []


class FakeService:
    """A thread that answers the control messages NOTIFYed on *channel*."""

    def __init__(
        self,
        dsn: str,
        channel: str,
        node_id: str,
        answer: Answer = echo,
        *,
        named: bool = True,
        also: Sequence[str] = (),
    ) -> None:
        """Listen on *channel* and the channels *also*; *named* ``False`` leaves the
        connection unnamed, as a dispatcherd service's is (the client cannot find it)."""
        self.node_id = node_id
        self.received: list[dict[str, Any]] = []
        """The control messages received, decoded."""
        self._answer = answer
        self._stop = threading.Event()
        self._conn = psycopg.connect(
            dsn,
            autocommit=True,
            application_name=service_application_name(node_id, [channel, *also]) if named else "",
        )
        for listened in (channel, *also):
            self._conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(listened)))
        self._thread = threading.Thread(target=self._serve, name=f"fake-service-{node_id}")
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            # Collected first: no query may run while notifies() waits.
            for notify in list(self._conn.notifies(timeout=0.05)):
                message = json.loads(notify.payload)
                self.received.append(message)
                if message.get("reply_to"):
                    for payload in self._answer(self.node_id, message):
                        self._conn.execute(
                            "SELECT pg_notify(%s, %s)", (message["reply_to"], payload)
                        )

    def stop(self) -> None:
        """Stop answering and disconnect."""
        self._stop.set()
        self._thread.join(10)
        self._conn.close()


class FakeSocketService:
    """A thread that accepts one connection at *path*, reads one line and sends *answer*.

    Like a service, it answers only a message with a ``reply_to``.
    """

    def __init__(self, path: Path, answer: bytes) -> None:
        self.received: list[dict[str, Any]] = []
        """The message received, decoded."""
        self._answer = answer
        self._server = socket.socket(socket.AF_UNIX)
        self._server.bind(str(path))
        self._server.listen(1)
        self._thread = threading.Thread(target=self._serve, name="fake-socket-service")
        self._thread.start()

    def _serve(self) -> None:
        with self._server, self._server.accept()[0] as connection:
            line = b""
            while not line.endswith(b"\n"):
                piece = connection.recv(1 << 16)
                if not piece:
                    break
                line += piece
            self.received.append(json.loads(line))
            if self.received[-1].get("reply_to"):  # as a service: no reply_to, no reply
                connection.sendall(self._answer)

    def join(self) -> None:
        """Wait until the request was answered."""
        self._thread.join(10)
        assert not self._thread.is_alive(), "the socket service got no request"

"""The socket broker: task and control messages over a local unix socket, one per line.

``dispatcherctl`` on the same host talks to the service here without a database round
trip, so it works even while the database is down. Each line goes through the intake like a
NOTIFY payload (chunks, signatures, validation). The format is dispatcherd's: a message
longer than :data:`~dispatcher.schema.chunks.SOCKET_CHUNK_BYTES` (1 kB) may come cut into
chunk envelopes, one per line, over one connection; the intake joins them.

Every control message that arrives on a connection is answered on that same connection
(never through another broker), once its last chunk has arrived: one line per reply, or,
for a reply over 1 kB, its chunk envelopes one per line (as dispatcherd's service sends
them, and as its clients and ours join them). The socket file is created with mode 0600
(only its owner may connect) and removed when the service stops.

Input is bounded like any other: lines of at most
:data:`~dispatcher.schema.MAX_MESSAGE_BYTES` bytes (a longer one closes the connection), and
a line that breaks anything costs that line only. Clients cannot hold the socket either: at
most :data:`MAX_CLIENTS` connections are served at once (one more gets an error reply, then
is closed), a connection that sends no complete line for :data:`IDLE_TIMEOUT` seconds is
closed, and so is one that leaves its replies unread for :data:`WRITE_TIMEOUT` seconds.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import anyio
from anyio.abc import SocketListener, SocketStream, TaskStatus

from dispatcher.schema import MAX_MESSAGE_BYTES
from dispatcher.schema.chunks import socket_lines
from dispatcher.server.accepting import serve_connections
from dispatcher.server.brokers.base import BrokerBase, BrokerContext, Deliver, StartRefused
from dispatcher.server.brokers.socket_refusals import socket_refusal
from dispatcher.server.log_records import get_logger
from dispatcher.server.origin import Origin
from dispatcher.server.ratelimit import InternalErrorLog, RateLimitedLog
from dispatcher.server.stats import ServiceStats

logger = get_logger("dispatcher.socket")

MAX_CLIENTS: Final = 64
"""Connections served at once; more get an error reply and are closed, with a log line."""

IDLE_TIMEOUT: Final = 30.0
"""Seconds a connection may go without sending a complete line before it is closed."""

WRITE_TIMEOUT: Final = 10.0
"""Seconds the sending of replies may wait for the client to read, before it is closed."""

TOO_MANY_CLIENTS: Final = (
    "the service has too many socket clients ({open} connected, the most it serves at once); "
    "try again shortly"
)
"""The ``error`` of the reply to a connection refused for want of a place."""


class ClientStalled(Exception):
    """A client left its replies unread for :data:`WRITE_TIMEOUT` seconds."""


class LineTooLong(ValueError):
    """A line grew beyond the limit of its :class:`LineBuffer`."""


class LineBuffer:
    """Splits a byte stream into lines, in time linear in its length.

    Only the bytes fed since the last call are searched for a newline, and the pending
    partial line is never copied whole again.
    """

    def __init__(self, max_line: int = MAX_MESSAGE_BYTES) -> None:
        self.max_line = max_line
        self._pending = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Add *data*; return the lines it completed, without their newlines.

        :raises LineTooLong: when a line is longer than ``max_line`` bytes (the buffer
            is then in no state to go on: close the stream).
        """
        pending = self._pending
        search = len(pending)
        pending += data
        lines = []
        start = 0
        while (end := pending.find(b"\n", search)) >= 0:
            if end - start > self.max_line:
                raise LineTooLong(f"line over {self.max_line} bytes")
            lines.append(bytes(pending[start:end]))
            start = search = end + 1
        if start:
            del pending[:start]
        if len(pending) > self.max_line:
            raise LineTooLong(f"line over {self.max_line} bytes")
        return lines


def private_unix_socket(path: Path) -> socket.socket:
    """A Unix socket listening at *path*, its file created with mode 0600.

    Only the file's owner (and root) may connect. The mode comes from the umask, which is the
    whole process's: it is set and put back around ``bind()`` alone, in this thread and
    without yielding to the event loop, so that no worker started and no file written
    meanwhile by the service gets it.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old_umask = os.umask(0o177)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old_umask)
        sock.listen(socket.SOMAXCONN)
    except OSError:
        sock.close()
        raise
    return sock


class SocketBroker(BrokerBase):
    """Serves the unix socket at *path*; replies go back on the connection they answer."""

    def __init__(
        self,
        path: str,
        stats: ServiceStats | None = None,
        max_clients: int = MAX_CLIENTS,
        *,
        node_id: str = "dispatcher",
        idle_timeout: float = IDLE_TIMEOUT,
        write_timeout: float = WRITE_TIMEOUT,
    ) -> None:
        super().__init__("socket")
        self.path = Path(path)
        self._stats = stats or ServiceStats()
        self.max_clients = max_clients
        self.node_id = node_id
        """Named in the error reply to a connection refused for want of a place."""
        self.idle_timeout = idle_timeout
        self.write_timeout = write_timeout
        self._clients = 0
        self._refusals = RateLimitedLog(logger, logging.WARNING)
        self._closings = RateLimitedLog(logger, logging.WARNING)
        self._internal_errors = InternalErrorLog(logger)

    async def receive(
        self, deliver: Deliver, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen until cancelled; the socket file is removed on the way out.

        :raises StartRefused: when the socket cannot be created (another service uses the
            path, its directory is missing or not writable).
        """
        try:
            self._claim_path()
            listener = await SocketListener.from_socket(private_unix_socket(self.path))
        except OSError as exc:
            raise StartRefused(socket_refusal(self.path, exc)) from None
        logger.info("listening on socket %s", self.path.absolute())
        task_status.started()
        try:
            async with listener:
                await serve_connections(
                    listener,
                    lambda client: self._serve_client(client, deliver),
                    name="the socket broker",
                    max_connections=self.max_clients,
                    refuse=self._refuse,
                    logger=logger,
                )
        finally:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def stop_receiving(self) -> None:
        """Go on serving: ``dispatcherctl`` may follow a graceful shutdown over the socket.

        The socket closes when the service ends; tasks sent to a service that is shutting
        down are not started.
        """

    def _claim_path(self) -> None:
        """Remove a stale socket file; refuse to take one a live service is using."""
        if not self.path.exists() and not self.path.is_symlink():
            return
        if not stat.S_ISSOCK(self.path.lstat().st_mode):
            raise OSError(errno.EEXIST, "it exists and is not a socket")
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(self.path))
            except OSError:
                self.path.unlink()  # nobody listens: left over from a crash
                return
        raise OSError(errno.EADDRINUSE, "another running service uses it")

    async def _refuse(self, client: SocketStream, connected: int) -> None:
        """Tell a client beyond :attr:`max_clients` why it is closed: one error reply."""
        self._refusals.log("refusing a socket connection: %d clients already connected", connected)
        reply = {"node_id": self.node_id, "error": TOO_MANY_CLIENTS.format(open=connected)}
        await client.send(json.dumps(reply).encode() + b"\n")

    async def _serve_client(self, client: SocketStream, deliver: Deliver) -> None:
        async with client:
            self._clients += 1
            await self._read_lines(client, deliver, f"socket:{self._clients}")

    async def _read_lines(self, client: SocketStream, deliver: Deliver, name: str) -> None:
        lines = LineBuffer()
        replies: list[Mapping[str, Any]] = []
        answers = _Answers()
        origin = Origin(
            "socket",
            reply=lambda _to, reply: replies.append(reply),
            channel=name,
            answering=answers.begun,
        )
        try:
            while True:
                complete: list[bytes] = []
                with anyio.move_on_after(self.idle_timeout):
                    while True:  # until a line is whole (each one gives more time)
                        complete = lines.feed(await client.receive())
                        if complete:
                            break
                if not complete:
                    self._closings.log(
                        "%s: no complete line in %g s: closing the connection",
                        name,
                        self.idle_timeout,
                    )
                    return
                for line in complete:
                    if line and not line.isspace():  # as line.strip(), without a copy
                        await self._handle_line(client, line, deliver, origin, replies, answers)
        except LineTooLong as exc:
            self._stats.rejected["oversized"] += 1
            logger.warning("%s: %s: closing the connection", name, exc)
        except ClientStalled:
            self._closings.log(
                "%s: replies left unread for %g s: closing the connection",
                name,
                self.write_timeout,
            )
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError):
            return

    async def _handle_line(
        self,
        client: SocketStream,
        line: bytes,
        deliver: Deliver,
        origin: Origin,
        replies: list[Mapping[str, Any]],
        answers: _Answers,
    ) -> None:
        """Deliver one line, then send back the control replies it produced.

        A command answered in a task of its own is waited for (the service goes on
        meanwhile); the next line is read after. A reply over 1 kB goes as chunk envelopes,
        one per line. Whatever goes wrong costs this line only.
        """
        try:
            deliver(line.decode("utf-8", errors="replace"), origin)
            await answers.all_ended()
            for reply in replies:
                text = json.dumps(reply, separators=(",", ":"), default=str)
                await self._send(client, "".join(part + "\n" for part in socket_lines(text)))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError, ClientStalled):
            raise  # the connection is gone, or useless: stop reading it
        except Exception as exc:
            self._stats.rejected["internal_error"] += 1
            self._internal_errors.report("socket broker", exc, f"a line from {origin.channel}")
        finally:
            replies.clear()

    async def _send(self, client: SocketStream, text: str) -> None:
        """Send *text* to *client*.

        :raises ClientStalled: when the client has not read it within :attr:`write_timeout`.
        """
        with anyio.move_on_after(self.write_timeout):
            await client.send(text.encode())
            return
        raise ClientStalled


class _Answers:
    """The control messages of one connection being answered in tasks of their own."""

    def __init__(self) -> None:
        self._running = 0
        self._ended = anyio.Event()

    def begun(self) -> Callable[[], None]:
        """One more is being answered; call what this returns once it has ended."""
        self._running += 1
        ended = False

        def end() -> None:
            nonlocal ended
            if not ended:
                ended = True
                self._running -= 1
                if not self._running:
                    self._ended.set()

        return end

    async def all_ended(self) -> None:
        """Wait until none is being answered."""
        while self._running:
            await self._ended.wait()
            self._ended = anyio.Event()


def create(options: Mapping[str, Any], context: BrokerContext) -> SocketBroker:
    """The factory of ``brokers.socket`` (it reads the typed section of the settings)."""
    settings = context.settings.brokers.socket
    assert settings is not None, "the socket factory is only called when it is configured"
    return SocketBroker(settings.path, stats=context.stats, node_id=context.node_id)

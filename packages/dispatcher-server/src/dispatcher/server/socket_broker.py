"""The local socket broker: task and control messages over a unix socket, one per line.

``dispatcherctl`` on the same host talks to the service here without a database round
trip, so it works even while the database is down. Replies to control messages go back on
the same connection. The socket file is created with mode 0600 (only its owner may connect)
and removed when the service stops.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import SocketStream, TaskStatus

from dispatcher.schema import MAX_MESSAGE_BYTES

logger = logging.getLogger("dispatcher.socket")

ControlRunner = Callable[[dict[str, Any]], dict[str, Any] | None]


class SocketBroker:
    """Serves the unix socket at *path*."""

    def __init__(
        self, path: str, on_message: Callable[[str, str], None], run_control: ControlRunner
    ) -> None:
        self.path = Path(path)
        self._on_message = on_message
        self._run_control = run_control
        self._clients = 0

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled; the socket file is removed on the way out."""
        self._claim_path()
        old_umask = os.umask(0o177)  # the file is created 0600: only its owner may connect
        try:
            listener = await anyio.create_unix_listener(self.path)
        finally:
            os.umask(old_umask)
        logger.info("listening on socket %s", self.path)
        task_status.started()
        try:
            async with listener:
                await listener.serve(self._serve_client)
        finally:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def _claim_path(self) -> None:
        """Remove a stale socket file; refuse to take one a live service is using."""
        if not self.path.exists() and not self.path.is_symlink():
            return
        if not stat.S_ISSOCK(self.path.lstat().st_mode):
            raise OSError(f"{self.path} exists and is not a socket")
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(self.path))
            except OSError:
                self.path.unlink()  # nobody listens: left over from a crash
                return
        raise OSError(f"{self.path} is in use by another running service")

    async def _serve_client(self, client: SocketStream) -> None:
        self._clients += 1
        origin = f"socket:{self._clients}"
        buffer = b""
        async with client:
            try:
                async for data in client:
                    buffer += data
                    if len(buffer) > MAX_MESSAGE_BYTES:
                        logger.warning("%s: line over %d bytes: closing", origin, MAX_MESSAGE_BYTES)
                        return
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        if line.strip():
                            await self._handle_line(client, line, origin)
            except (anyio.BrokenResourceError, anyio.EndOfStream, OSError):
                return

    async def _handle_line(self, client: SocketStream, line: bytes, origin: str) -> None:
        text = line.decode("utf-8", errors="replace")
        try:
            message = json.loads(text)
        except ValueError:
            message = None
        if isinstance(message, dict) and "control" in message:
            reply = self._run_control(message)
            if reply is not None and message.get("reply_to"):
                encoded = json.dumps(reply, separators=(",", ":"), default=str) + "\n"
                await client.send(encoded.encode())
            return
        self._on_message(text, origin)

"""What a ``bind=True`` task receives first: facts about its run, and a line to its service.

:class:`BoundTask` is the worker's side of the publisher's
:class:`~dispatcher.publish.BoundTask` protocol: the task's uuid, the worker's id, and
control commands sent over the worker's own connection to the service.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Mapping
from typing import Any

from dispatcher.server.protocol import (
    CANCEL_SIGNALS,
    MAX_EVENT_BYTES,
    BlockingLineSocket,
    event_line,
)


class BoundTask:
    """What a ``bind=True`` task receives first: facts about its run, and a line home."""

    def __init__(self, uuid: str, worker_id: int, channel: BlockingLineSocket) -> None:
        self.uuid = uuid
        """The uuid of the message being run."""
        self.worker_id = worker_id
        """The id of the worker running it."""
        self._channel = channel

    def control(self, command: str, data: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Run a control command in this worker's service and return its reply.

        It travels over the worker's own connection to the service, not the broker. Commands
        here: ``run`` (start a task; needs ``producers.control``), ``running``, ``cancel``.
        One too large to send (:data:`~dispatcher.server.protocol.MAX_EVENT_BYTES` of JSON)
        is not sent: its reply says so, as the service's say why a command failed.
        """
        request = {"event": "control", "command": command, "data": dict(data or {})}
        line = event_line(request)
        if len(line) > MAX_EVENT_BYTES:  # (the service would take it for garbage)
            return {
                "error": f"the control command is {len(line)} bytes of JSON, over the limit of "
                f"{MAX_EVENT_BYTES} a worker may send its service"
            }
        # A cancel arriving mid-send would cut the line in two, and one arriving between a
        # read and the keeping of what it read would lose the run requests that came with
        # the reply: hold cancels until the reply is in (the service answers at once).
        signal.pthread_sigmask(signal.SIG_BLOCK, _CANCELLING)
        try:
            self._channel.send(line)
            line = self._channel.read_reply()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _CANCELLING)
        reply: dict[str, Any] = json.loads(line)["reply"]
        return reply


_CANCELLING = {signal.SIGUSR1, *CANCEL_SIGNALS}
"""The signals that cancel a task (see :data:`~dispatcher.server.protocol.CANCEL_SIGNALS`)."""

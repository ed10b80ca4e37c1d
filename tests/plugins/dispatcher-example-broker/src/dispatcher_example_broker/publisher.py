"""The publishing side: write payloads into a queue directory; read replies from files."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Mapping, Sequence
from typing import Any

from dispatcher.config import Settings
from dispatcher.publish import BrokerUnavailable
from dispatcher.publish.brokers import Outgoing, ReplyCollector
from dispatcher_example_broker.spool import (
    is_valid_name,
    queue_dir,
    reply_dir,
    take_files,
    write_atomically,
)


class SpoolPublisher:
    """Writes one file per send (its payloads, one a line) into each queue's directory."""

    name = "example_spool"

    def __init__(self, directory: str, queues: Sequence[str], poll_interval: float) -> None:
        self.directory = directory
        self.queues = tuple(queues)
        self.default_queue = self.queues[0] if self.queues else None
        self.poll_interval = poll_interval

    def send(self, messages: Sequence[Outgoing], connection: object | None = None) -> None:
        """Write the payloads for each queue as one file."""
        if connection is not None:
            raise TypeError("the example_spool broker cannot send inside a transaction")
        by_queue: dict[str, list[str]] = {}
        for queue, payload in messages:
            by_queue.setdefault(queue, []).append(payload)
        for queue, payloads in by_queue.items():
            if not is_valid_name(queue):
                raise BrokerUnavailable(f"{queue!r} cannot be a spool queue")
            folder = queue_dir(self.directory, queue)
            try:
                folder.mkdir(parents=True, exist_ok=True)
                write_atomically(folder, "".join(p + "\n" for p in payloads), ".msg")
            except OSError as exc:
                raise BrokerUnavailable(f"cannot write to the spool {folder}: {exc}") from None

    async def asend(self, messages: Sequence[Outgoing], connection: object | None = None) -> None:
        """:meth:`send`, in a thread."""
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
        """Make the reply directory, send the command, read replies until enough or late."""
        replies.expected = 1 if expected_replies is None else expected_replies
        folder = reply_dir(self.directory, reply_to)
        folder.mkdir(parents=True)
        try:
            target = queue or self.default_queue
            if target is None:
                raise BrokerUnavailable("no queue to send the control command to")
            self.send([(target, text)])
            deadline = time.monotonic() + timeout
            while len(replies.replies) < replies.expected and time.monotonic() < deadline:
                for reply in take_files(folder, ".json"):
                    replies.add(reply)
                time.sleep(self.poll_interval)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

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
        """:meth:`control_with_reply`, in a thread."""
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


def create(options: Mapping[str, Any], settings: Settings) -> SpoolPublisher:
    """The factory named by the plug-in's entry point (``publisher``)."""
    return SpoolPublisher(
        options["directory"],
        list(options.get("queues", ["default"])),
        float(options.get("poll_interval", 0.05)),
    )

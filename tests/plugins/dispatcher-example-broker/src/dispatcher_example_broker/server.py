"""The service side: deliver every payload found in the queue directories; reply with files.

It also shows the acknowledgement a durable broker gets: every line is delivered with a
receipt, and how each ended is appended to ``<directory>/settled.jsonl``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskStatus

from dispatcher.server.brokers import BrokerBase, BrokerContext, Deliver, Origin, Settled
from dispatcher_example_broker.spool import (
    is_valid_name,
    queue_dir,
    reply_dir,
    take_files,
    write_atomically,
)


class SpoolBroker(BrokerBase):
    """Reads ``<directory>/queues/<queue>/`` for each configured queue."""

    def __init__(self, directory: str, queues: list[str], poll_interval: float) -> None:
        super().__init__("example_spool")
        self.directory = directory
        self.queues = queues
        self.poll_interval = poll_interval
        self._receipts = itertools.count(1)

    async def receive(
        self, deliver: Deliver, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Look at every queue directory, deliver what is there, wait, again."""
        for queue in self.queues:
            queue_dir(self.directory, queue).mkdir(parents=True, exist_ok=True)
        task_status.started()
        while True:
            for queue, texts in await anyio.to_thread.run_sync(self._take_all):
                for text in texts:
                    for line in text.splitlines():
                        if line.strip():
                            receipt = f"{queue}-{next(self._receipts)}"
                            deliver(line, Origin("example_spool", channel=queue, receipt=receipt))
            await anyio.sleep(self.poll_interval)

    def _take_all(self) -> list[tuple[str, list[str]]]:
        return [(q, take_files(queue_dir(self.directory, q), ".msg")) for q in self.queues]

    async def reply(self, reply_to: str, reply: Mapping[str, Any]) -> None:
        """Write *reply* into the directory the requester made for *reply_to*."""
        folder = reply_dir(self.directory, reply_to)
        if not is_valid_name(reply_to) or not folder.is_dir():
            return  # nobody waits there
        text = json.dumps(reply, separators=(",", ":"), default=str)
        await anyio.to_thread.run_sync(write_atomically, folder, text, ".json")

    async def acknowledge(self, settled: Sequence[Settled]) -> None:
        """Record how the deliveries ended, one JSON line each."""
        lines = "".join(
            json.dumps({"receipt": s.receipt, "outcome": s.outcome, "reason": s.reason}) + "\n"
            for s in settled
        )
        await anyio.to_thread.run_sync(self._append, lines)

    def _append(self, lines: str) -> None:
        with (Path(self.directory) / "settled.jsonl").open("a", encoding="utf-8") as out:
            out.write(lines)


def create(options: Mapping[str, Any], context: BrokerContext) -> SpoolBroker:
    """The factory named by the plug-in's entry point (``server``)."""
    return SpoolBroker(
        options["directory"],
        list(options.get("queues", ["default"])),
        float(options.get("poll_interval", 0.05)),
    )

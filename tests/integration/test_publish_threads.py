"""Threads of one process publishing at once share the SDK's connection, and lose nothing."""

from __future__ import annotations

import json
import threading
from typing import Any

import psycopg

from dispatcher.config import Settings
from dispatcher.publish import Submission, batch
from support import tasks
from support.postgres import wait_for_notifies

THREADS = 8
EACH = 40


def test_threads_publishing_at_once_lose_nothing(
    configured: Settings, listener: psycopg.Connection[Any]
) -> None:
    sent: list[Submission] = []
    failures: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def publish(thread: int) -> None:
        try:
            start.wait(10)
            for n in range(EACH):
                if n % 10 == 9:
                    with batch():  # a batch of two, on the same shared connection
                        sent.append(tasks.add.delay(thread, n))
                        sent.append(tasks.add.delay(thread, -n))
                else:
                    sent.append(tasks.add.delay(thread, n))
        except BaseException as exc:  # reported below, not lost in the thread
            failures.append(exc)

    threads = [threading.Thread(target=publish, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert failures == []
    arrived = wait_for_notifies(listener, len(sent), timeout=30)
    assert sorted(json.loads(n.payload)["uuid"] for n in arrived) == sorted(s.uuid for s in sent)

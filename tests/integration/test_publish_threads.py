"""Threads of one process publishing at once share the SDK's connection, and lose nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
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


# Run in a child process: a use-after-free of the connection would crash (or hang) it,
# failing this test instead of killing the test run.
RACING_CLOSE = """
import faulthandler, json, sys, threading
from dispatcher.config import setup
from dispatcher.publish import batch, close_connections
from dispatcher.publish.errors import BrokerUnavailable
from support import tasks

faulthandler.dump_traceback_later(40, exit=True)  # a hang: its stacks, then exit
dsn, channel, each = sys.argv[1], sys.argv[2], int(sys.argv[3])
setup({"version": 1, "brokers": {"pg_notify": {"conninfo": dsn, "channels": [channel]}}})
delivered, unavailable, other = [], [], []

def publish(thread):
    for n in range(each):
        try:
            with batch():  # a longer statement: more often running when closed
                sent = [tasks.add.delay(thread, n * 10 + k).uuid for k in range(10)]
            delivered.extend(sent)
        except BrokerUnavailable as exc:
            unavailable.append(str(exc))
        except BaseException as exc:
            other.append(repr(exc))

threads = [threading.Thread(target=publish, args=(t,)) for t in range(4)]
for thread in threads:
    thread.start()
closes = 0
while any(thread.is_alive() for thread in threads) and closes < 10 * each:
    close_connections()  # as an application's shutdown hook or a test's teardown may
    closes += 1
    threading.Event().wait(0.01)  # pacing only: about a hundred closes a second
for thread in threads:
    thread.join()
close_connections()
print(json.dumps({"delivered": delivered, "unavailable": unavailable, "other": other}))
"""


def test_closing_the_connections_while_threads_publish_neither_crashes_nor_loses_a_send(
    pg_dsn: str, channel: str, listener: psycopg.Connection[Any]
) -> None:
    tests_folder = Path(tasks.__file__).parents[1]
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(tests_folder), *sys.path])}
    child = subprocess.run(
        [sys.executable, "-c", RACING_CLOSE, pg_dsn, channel, "100"],
        capture_output=True,
        text=True,
        timeout=50,
        env=env,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    outcome = json.loads(child.stdout)
    assert outcome["other"] == []
    assert len(outcome["delivered"]) + 10 * len(outcome["unavailable"]) == 4 * 100 * 10
    arrived = wait_for_notifies(listener, len(outcome["delivered"]), timeout=30)
    assert sorted(json.loads(n.payload)["uuid"] for n in arrived) == sorted(outcome["delivered"])

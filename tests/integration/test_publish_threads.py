"""Threads of one process publishing at once share the SDK's connection, and lose nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dispatcher.config import Settings
from dispatcher.publish import Submission, batch, close_connections, provider_registry_sync
from dispatcher.publish.errors import BrokerUnavailable
from dispatcher.publish.provider_registry_sync import shared_provider
from dispatcher.publish.provider_sync import ConnectionProvider
from support import tasks
from support.postgres import wait_for_notifies
from support.service import wait_until

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

HANG = 15  # seconds without a send landing: a hang (its stacks, then exit)
faulthandler.dump_traceback_later(HANG, exit=True)
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
# A close waits for a send to land since the one before (each close while a connect is
# under way makes the threads connect again: closes at a fixed pace starved them on a
# loaded machine); the watchdog is armed again at each, so that it finds a hang, not slowness.
closes = landed = 0
while any(thread.is_alive() for thread in threads):
    if len(delivered) > landed:
        landed = len(delivered)
        faulthandler.dump_traceback_later(HANG, exit=True)
        close_connections()  # as an application's shutdown hook or a test's teardown may
        closes += 1
    threading.Event().wait(0.01)  # pacing only: at most about a hundred closes a second
for thread in threads:
    thread.join()
faulthandler.cancel_dump_traceback_later()
close_connections()
print(json.dumps({"delivered": delivered, "unavailable": unavailable, "other": other, "closes": closes}))
"""


@pytest.mark.timeout(120)  # above the child's limit, itself above its watchdog's
def test_closing_the_connections_while_threads_publish_neither_crashes_nor_loses_a_send(
    pg_dsn: str, channel: str, listener: psycopg.Connection[Any]
) -> None:
    tests_folder = Path(tasks.__file__).parents[1]
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(tests_folder), *sys.path])}
    child = subprocess.run(
        [sys.executable, "-c", RACING_CLOSE, pg_dsn, channel, "100"],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    outcome = json.loads(child.stdout)
    assert outcome["other"] == []
    assert outcome["unavailable"] == []  # a close never makes a send fail
    assert len(outcome["delivered"]) == 4 * 100 * 10
    assert outcome["closes"] >= 10  # closed while the others sent, again and again
    arrived = wait_for_notifies(listener, len(outcome["delivered"]), timeout=30)
    assert sorted(json.loads(n.payload)["uuid"] for n in arrived) == sorted(outcome["delivered"])
    assert list(listener.notifies(timeout=0.5, stop_after=1)) == []  # each sent once


def backend_of(provider: ConnectionProvider) -> int:
    row = provider.execute("SELECT pg_backend_pid()", ()).fetchone()
    assert row is not None
    return int(row[0])


def backend_gone(conn: psycopg.Connection[Any], pid: int) -> bool:
    return conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone() is None


def test_a_signal_handler_closing_the_connections_during_a_send_returns_at_once(
    pg_dsn: str, pg_conn: psycopg.Connection[Any], channel: str, listener: psycopg.Connection[Any]
) -> None:
    """The handler runs in the thread it interrupted, which holds the connection's lock for
    its statement: closing waited for it in vain (5 s), the statement ending only after."""
    provider = shared_provider(pg_dsn)
    tag = f"signalled {channel}"
    took: list[float] = []

    def handler(signum: int, frame: object) -> None:
        started = time.monotonic()
        close_connections()
        took.append(time.monotonic() - started)

    def signal_once_running() -> None:
        wait_until(
            lambda: pg_conn.execute(
                "SELECT 1 FROM pg_stat_activity WHERE state = 'active' AND query LIKE %s",
                (f"%{tag}%",),
            ).fetchone(),
            timeout=10,
        )
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, handler)
    try:
        signaller = threading.Thread(target=signal_once_running)
        signaller.start()
        row = provider.execute(f"SELECT pg_backend_pid(), pg_sleep(2) /* {tag} */", ()).fetchone()
        signaller.join(10)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert row is not None  # the statement completed
    assert len(took) == 1
    assert took[0] < 1
    wait_until(lambda: backend_gone(pg_conn, row[0]), timeout=10)  # then closed
    provider.notify([(channel, "after")])
    assert [n.payload for n in wait_for_notifies(listener, 1)] == ["after"]
    assert backend_of(provider) != row[0]


@pytest.mark.parametrize("held", ["provider", "providers"])
def test_closing_the_connections_while_this_thread_holds_a_provider_lock_does_not_deadlock(
    pg_dsn: str, pg_conn: psycopg.Connection[Any], channel: str, held: str
) -> None:
    """As a signal handler does when it interrupts its thread taking a connection (the
    provider's lock, in its slots' current() or connection_of()) or a provider (shared_provider()'s)."""
    provider = shared_provider(pg_dsn)
    pid = backend_of(provider)
    lock = provider.slots._lock if held == "provider" else provider_registry_sync._providers_lock
    returned = threading.Event()

    def close_holding_the_lock() -> None:
        with lock:
            close_connections()
            returned.set()

    closer = threading.Thread(target=close_holding_the_lock, daemon=True)
    closer.start()
    closer.join(10)
    assert returned.is_set()
    wait_until(lambda: backend_gone(pg_conn, pid), timeout=10)  # closed once the lock was free
    assert backend_of(provider) != pid


def test_a_statement_broken_by_the_server_while_closed_is_sent_twice_at_most(
    pg_dsn: str, pg_conn: psycopg.Connection[Any], channel: str
) -> None:
    """A close() under a statement, then the server breaking the connection: the statement
    may have run, so its retry is spent (it was resent for free: up to three sends)."""
    provider = shared_provider(pg_dsn)
    counter = f"sends_{channel}"
    pg_conn.execute(f'CREATE SEQUENCE "{counter}"')
    tag = f"broken {channel}"
    done = threading.Event()

    def break_every_attempt() -> None:
        broken: set[int] = set()
        while not done.is_set():
            row = pg_conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE state = 'active' AND query LIKE %s"
                " AND NOT pid = ANY(%s)",
                (f"%{tag}%", list(broken)),
            ).fetchone()
            if row is None:
                done.wait(0.02)  # polling pg_stat_activity
                continue
            if not broken:
                close_connections()  # under the statement: left to the closer thread
            pg_conn.execute("SELECT pg_terminate_backend(%s)", (row[0],))
            broken.add(row[0])

    breaker = threading.Thread(target=break_every_attempt)
    breaker.start()
    try:
        with pytest.raises(BrokerUnavailable):
            provider.execute(f"SELECT nextval('\"{counter}\"'), pg_sleep(30) /* {tag} */", ())
    finally:
        done.set()
        breaker.join(10)
    row = pg_conn.execute(f'SELECT last_value FROM "{counter}"').fetchone()
    assert row == (2,)
    pg_conn.execute(f'DROP SEQUENCE "{counter}"')

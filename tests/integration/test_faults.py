"""Database faults in the middle of a burst: the service reconnects fast and keeps working.

These tests restart PostgreSQL and cut the service's connection, so they run against an
embedded server of their own (its own data directory and socket), never the shared one.

pg_notify delivers at most once: what is NOTIFYed while the listener is not connected is lost
by design. The tests assert only on tasks published after the service reconnected; how many
were lost before is printed, for information (``pytest -s`` shows it).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dispatcher.config import reset, setup
from dispatcher.control import control_with_reply
from dispatcher.control.local import socket_request
from dispatcher.publish import BrokerUnavailable, close_connections, submit_task
from dispatcher.schema import SERVICE_NAME_PREFIX
from support.postgres import EmbeddedServer
from support.service import Evidence, ServiceProcess, wait_until

RECORD = "support.service_tasks.record"
RECONNECT_WITHIN = 2.0
"""Seconds the service may take to listen again once the database accepts connections,
beyond the wait its reconnect backoff may still have ahead (see :func:`check_recovery`)."""
AFTER_RECONNECT = 100
"""Tasks published after the reconnect, which must all run."""

pytestmark = pytest.mark.timeout(90)

StartService = Callable[..., ServiceProcess]


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[EmbeddedServer]:
    """An embedded PostgreSQL these tests may stop, start and disrupt."""
    server = EmbeddedServer()
    try:
        yield server
    finally:
        server.remove()


class Burst:
    """Publishes ``record(path, n)`` for n = 0, 1, 2, ... from a thread, through the SDK.

    A number the SDK could not send (the database was down) is noted in ``refused``; the
    SDK opens a new connection for the next one.
    """

    def __init__(self, channel: str, path: Path, interval: float = 0.004) -> None:
        self.channel, self.path, self.interval = channel, path, interval
        self.sent: list[int] = []
        self.refused: list[int] = []
        self.error: BaseException | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="burst", daemon=True)

    @property
    def next_number(self) -> int:
        return len(self.sent) + len(self.refused)

    def __enter__(self) -> Burst:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(10)
        close_connections()

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                number = self.next_number
                try:
                    submit_task(RECORD, args=[str(self.path), number], queue=self.channel)
                except BrokerUnavailable:
                    self.refused.append(number)
                else:
                    self.sent.append(number)
                self._stopping.wait(self.interval)
        except BaseException as exc:  # surfaced by the test, not lost in the thread
            self.error = exc

    def wait_sent(self, count: int, timeout: float = 15) -> None:
        wait_until(lambda: len(self.sent) >= count or self.error, timeout)
        assert self.error is None, self.error


def run_numbers(evidence: Evidence) -> set[int]:
    return {record["args"][0] for record in evidence.records()}


class FaultRig:
    """A service on the owned database with a local socket to ask for its ``status``."""

    def __init__(self, service: ServiceProcess, channel: str) -> None:
        self.service = service
        self.channel = channel
        self.socket = service.folder / "dispatcher.sock"

    def status(self) -> dict[str, Any]:
        request = {"control": "status", "reply_to": "fault-test"}
        reply = socket_request(str(self.socket), request, timeout=5)
        assert reply is not None, "no status reply over the socket"
        status: dict[str, Any] = json.loads(reply)
        return status

    def wait_reconnected(self, timeout: float) -> float:
        """Wait until the listener has connected a second time; return when it was seen."""
        wait_until(lambda: self.status()["listener"]["connects"] >= 2, timeout, interval=0.01)
        return time.monotonic()


@pytest.fixture
def rig(
    own_postgres: EmbeddedServer, start_service: StartService, channel: str
) -> Iterator[FaultRig]:
    config: dict[str, Any] = {
        "version": 1,
        "brokers": {
            "pg_notify": {"conninfo": own_postgres.dsn, "channels": [channel]},
            "socket": {"path": "dispatcher.sock"},
        },
        "tasks": {"modules": ["support.service_tasks"]},
        "service": {"node_id": channel, "pool": {"min_workers": 2, "max_workers": 2}},
    }
    setup({"version": 1, "brokers": {"pg_notify": config["brokers"]["pg_notify"]}})
    try:
        yield FaultRig(start_service(config), channel)
    finally:
        close_connections()
        reset()


def check_recovery(
    rig: FaultRig,
    burst: Burst,
    evidence: Evidence,
    fault: str,
    back_at: float,
    down_at: float | None = None,
) -> None:
    """Assert what must hold once the database is reachable again (at *back_at*).

    After an outage that began at *down_at*, the listener's next attempt may still be due:
    its delays double from 0.1 s (with 10 % jitter), so the next one comes at most about
    1.1 times the outage after its end.
    """
    reconnected_at = rig.wait_reconnected(timeout=10)
    mark = burst.next_number + 1  # the one being sent may have left before the reconnect
    burst.wait_sent(mark + AFTER_RECONNECT)
    burst.stop()
    after = {n for n in burst.sent if n >= mark}
    wait_until(lambda: after <= run_numbers(evidence), timeout=15)
    ran = run_numbers(evidence)
    status = rig.status()
    assert rig.service.process is not None
    assert rig.service.process.poll() is None
    assert status["listener"]["connects"] == 2
    assert status["listener"]["failures"] >= 1
    assert status["rejected"] == {}
    assert status["pool"]["lost"] == 0
    lost = sorted(set(burst.sent) - ran)
    print(
        f"\n{fault}: listening again {reconnected_at - back_at:.2f} s after the database was "
        f"back; {len(burst.sent)} tasks published, {len(burst.refused)} refused while the "
        f"database was down, {len(lost)} lost (NOTIFYed while the listener was away: "
        f"{lost[:5]}{'...' if len(lost) > 5 else ''}); listener {status['listener']}"
    )
    backoff = 0.0 if down_at is None else 1.1 * (back_at - down_at)
    assert reconnected_at - back_at < RECONNECT_WITHIN + backoff


def test_postgres_restart_mid_burst(
    rig: FaultRig, own_postgres: EmbeddedServer, evidence: Evidence
) -> None:
    with Burst(rig.channel, evidence.path) as burst:
        wait_until(lambda: len(run_numbers(evidence)) >= 50, timeout=15)
        down_at = time.monotonic()
        own_postgres.stop("fast")
        own_postgres.start()
        back_at = time.monotonic()
        check_recovery(rig, burst, evidence, "PostgreSQL restart", back_at, down_at)
    assert burst.error is None


def test_listener_connection_terminated_mid_burst(
    rig: FaultRig, own_postgres: EmbeddedServer, evidence: Evidence
) -> None:
    with Burst(rig.channel, evidence.path) as burst:
        wait_until(lambda: len(run_numbers(evidence)) >= 50, timeout=15)
        with psycopg.connect(own_postgres.dsn, autocommit=True) as conn:
            [(terminated,)] = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE starts_with(application_name, %s)",
                (SERVICE_NAME_PREFIX,),
            ).fetchall()
        back_at = time.monotonic()
        assert terminated == 1
        check_recovery(rig, burst, evidence, "listener terminated", back_at)
    assert burst.error is None


def test_control_replies_over_pg_notify_after_a_restart(
    rig: FaultRig, own_postgres: EmbeddedServer
) -> None:
    def alive() -> list[str]:
        result = control_with_reply("alive", queue=rig.channel, expected_replies=1, timeout=3)
        return [reply["node_id"] for reply in result.replies]

    assert alive() == [rig.channel]  # the service's reply connection is open
    own_postgres.stop("fast")
    own_postgres.start()
    rig.wait_reconnected(timeout=10)
    assert alive() == [rig.channel]

"""A burst of control commands over a backlog: the quick answers do not wait for the walks.

64 commands that walk every task held (``running`` with an ``args`` filter) go on one at a
time over a backlog, and those beyond 64 are refused: the refusals, and an ``alive`` sent
meanwhile, are answered at once, not each after a round trip of its own behind the others
(seconds, before their replies went out together and the walks paused by the clock).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from support.service import Evidence, ServiceProcess, wait_until
from support.service import task_message as message

StartService = Callable[..., ServiceProcess]

BACKLOG = 10_000
"""Tasks queued behind a busy worker: a walk over them reads each message (~0.1 s)."""
WALKS = 64  # dispatcher.server.service.MAX_CONTROL_IN_FLIGHT
REFUSED = 100
QUICK = 3.0
"""Seconds within which the refusals and ``alive`` must be answered: tens of milliseconds
here once fixed, seconds before (a round trip per refusal, each taking ten turns of a
walk); generous for a loaded machine."""


def status(service: ServiceProcess) -> dict[str, Any]:
    """The service's ``status`` reply, asked with dispatcherctl over pg_notify."""
    config = str(service.config_path)
    result = subprocess.run(
        [sys.executable, "-m", "dispatcher.server.ctl", "status", "--json", "--config", config],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    [reply] = json.loads(result.stdout)
    return reply  # type: ignore[no-any-return]


def control(command: str, reply_to: str, **data: Any) -> str:
    """A control message, with a uuid of its own (a transaction folds identical NOTIFYs)."""
    message = {"control": command, "reply_to": reply_to, "control_data": data}
    return json.dumps({**message, "uuid": str(uuid.uuid4())})


def replies(
    listener: psycopg.Connection[Any], count: int, timeout: float
) -> list[tuple[float, str, dict[str, Any]]]:
    """The next *count* replies the listener hears: when each came, its channel, the reply."""
    heard: list[tuple[float, str, dict[str, Any]]] = []
    deadline = time.monotonic() + timeout
    while len(heard) < count and (left := deadline - time.monotonic()) > 0:
        for note in listener.notifies(timeout=left, stop_after=count - len(heard)):
            heard.append((time.monotonic(), note.channel, json.loads(note.payload)))
    return heard


@pytest.mark.timeout(180)
def test_refusals_and_alive_are_answered_at_once_while_walks_go_over_a_backlog(
    start_service: StartService,
    service_config: dict[str, Any],
    pg_dsn: str,
    pg_conn: psycopg.Connection[Any],
    channel: str,
    evidence: Evidence,
    tmp_path: Path,
) -> None:
    service_config["service"]["pool"] = {"min_workers": 1, "max_workers": 1}
    service = start_service(service_config)
    gate = tmp_path / "gate"
    pg_conn.execute(
        "SELECT pg_notify(%s, %s)", (channel, message("wait_for_file", evidence.path, gate))
    )
    evidence.wait_for(1)  # the only worker is busy: what comes next waits in the queue
    with pg_conn.transaction():
        for n in range(BACKLOG):
            pg_conn.execute(
                "SELECT pg_notify(%s, %s)", (channel, message("record", evidence.path, n))
            )
    walk_replies, alive_replies = f"{channel}_walks", f"{channel}_alive"
    with psycopg.connect(pg_dsn, autocommit=True) as listener:
        listener.execute(f"LISTEN {walk_replies}")
        listener.execute(f"LISTEN {alive_replies}")

        wait_until(lambda: status(service)["queued"] >= BACKLOG, timeout=60, interval=0.2)
        walk = {"task": "support.service_tasks.record", "args": ["none"]}
        sent = time.monotonic()
        with pg_conn.transaction():  # they arrive together
            for _ in range(WALKS + REFUSED):
                pg_conn.execute(
                    "SELECT pg_notify(%s, %s)", (channel, control("running", walk_replies, **walk))
                )
            pg_conn.execute("SELECT pg_notify(%s, %s)", (channel, control("alive", alive_replies)))
        heard = replies(listener, WALKS + REFUSED + 1, 120)
    gate.touch()
    service.stop()

    refusals = [at - sent for at, _, reply in heard if "error" in reply]
    alive = [at - sent for at, where, _ in heard if where == alive_replies]
    walked = [reply for _, where, reply in heard if where == walk_replies and "error" not in reply]
    assert len(refusals) == REFUSED, heard[:3]
    assert all("being answered already" in reply.get("error", "") for _, _, reply in heard[:1])
    # Every walk answered, each (identical) reply delivered: none folded into another.
    assert len(walked) == WALKS
    assert len(alive) == 1
    assert max(refusals) < QUICK, f"refusals answered {min(refusals):.2f}-{max(refusals):.2f} s"
    assert alive[0] < QUICK, f"alive answered after {alive[0]:.2f} s"

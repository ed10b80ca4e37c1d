"""The service under resource limits: threads, processes, file descriptors running short.

Shortages are injected into the service subprocess (see ``support/faults``): no thread can
start for a while, the fork server cannot fork, a low ``RLIMIT_NOFILE``. The service must
say what ran short, wait, and serve again once it is over, never stop listening for good.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from support.durable import enqueue, job_message, migrated, wait_for_states
from support.faults import fault_env
from support.queue_rows import unique_schema
from support.service import Evidence, ServiceProcess
from support.service import task_message as message

pytestmark = pytest.mark.timeout(60)

RECORD = "support.service_tasks.record"
StartService = Callable[..., ServiceProcess]
Notify = Callable[[str, str], None]
Conn = psycopg.Connection[Any]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_brokers_outlive_a_shortage_of_threads_at_start(
    start_service: StartService,
    service_config: dict[str, Any],
    pg_dsn: str,
    pg_conn: Conn,
    channel: str,
    notify: Notify,
    evidence: Evidence,
    tmp_path: Path,
) -> None:
    """No thread for the host name's lookup, nor for binding the socket: each broker (and
    the metrics server) says so, tries again, and serves once threads can start again, as
    after a database outage."""
    schema = migrated(pg_conn, unique_schema())
    # A host name, not an address: psycopg looks it up in a thread.
    conninfo = make_conninfo(pg_dsn, host="localhost")
    brokers = service_config["brokers"]
    brokers["pg_notify"]["conninfo"] = conninfo
    brokers["pg_queue"] = {"conninfo": conninfo, "schema": schema, "queues": [channel + "_q"]}
    brokers["socket"] = {"path": str(tmp_path / "service.sock")}
    service_config["service"]["metrics"] = {"host": "localhost", "port": free_port()}
    threads_back = tmp_path / "threads-back"
    env = fault_env(no_threads=str(threads_back))
    service = start_service(service_config, wait=False, env=env)
    service.wait_for_log(r"pg_notify.*can't start new thread")
    service.wait_for_log(r"socket.*can't start new thread")
    service.wait_for_log(r"pg_queue.*(can't start new thread|TaskGroup)")
    service.wait_for_log(r"metrics.*can't start new thread")
    threads_back.touch()
    service.wait_for_log(r"listening on channels")
    service.wait_for_log(r"listening on socket")
    service.wait_for_log(r"serving metrics on")
    notify(channel, message(RECORD, evidence.path, "over pg_notify"))
    uuids = enqueue(pg_conn, schema, channel + "_q", [job_message("record", evidence.path, "q")])
    wait_for_states(pg_conn, schema, uuids, {"done"})
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(str(tmp_path / "service.sock"))
        client.sendall((message(RECORD, evidence.path, "over the socket") + "\n").encode())
    records = evidence.wait_for(3)
    assert sorted(str(r["args"][0]) for r in records) == ["over pg_notify", "over the socket", "q"]
    assert service.stop() == 0
    assert not re.search(r"broker stopped|Traceback", service.log), service.log

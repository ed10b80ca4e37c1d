"""The pg_queue broker when its database stops answering or goes away for a while.

The service reaches the database through a TCP proxy the test freezes (packets stop, no
connection is closed: a database that hangs) or takes down and brings back.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from support.durable import enqueue, job_message, migrated, queue_config, wait_for_states
from support.proxy import DatabaseProxy
from support.queue_rows import unique_schema
from support.service import Evidence, ServiceProcess

pytestmark = pytest.mark.timeout(90)

Conn = psycopg.Connection[Any]
Start = Callable[..., ServiceProcess]


@pytest.fixture
def schema(pg_conn: Conn) -> str:
    return migrated(pg_conn, unique_schema())


def test_a_stop_ends_in_bounded_time_when_the_database_hangs_on_an_open_connection(
    start_service: Start,
    pg_dsn: str,
    pg_conn: Conn,
    schema: str,
    channel: str,
    evidence: Evidence,
) -> None:
    proxy = DatabaseProxy(pg_dsn)
    proxy.up()
    try:
        config = queue_config(proxy.dsn, schema, channel, lease=30)
        config["service"]["shutdown_grace"] = 3
        service = start_service(config)
        # A first job settles: the connection that writes outcomes is open.
        first = enqueue(pg_conn, schema, channel, [job_message("record", evidence.path, 1)])
        wait_for_states(pg_conn, schema, first, {"done"})
        # Two jobs end one after the other during the stop's grace: the first outcome's
        # write hangs, the second is written by the stop itself.
        sleeping = [job_message("sleep_then_record", evidence.path, s) for s in (0.5, 1.5)]
        enqueue(pg_conn, schema, channel, sleeping)
        evidence.wait_for(3)  # both running
        proxy.freeze(new=True)  # the database stops answering, as if SIGSTOPped
        started = time.monotonic()
        service.signal(signal.SIGTERM)
        assert service.wait(timeout=30) == 0
        took = time.monotonic() - started
    finally:
        proxy.down()
    assert took < 3 + 10, took
    assert "2 outcomes not recorded" in service.log  # it says what it gave up

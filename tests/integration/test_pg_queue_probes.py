"""Readiness of a durable service whose workers are all busy: its database going away is
seen by the renewal of the leases of the jobs it runs, not only by claims (which wait for
a free worker)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from support.durable import Conn, enqueue, job_message, own_schema, queue_config, wait_for_states
from support.metrics import free_port, probe
from support.proxy import DatabaseProxy
from support.service import Evidence, ServiceProcess, wait_until

pytestmark = pytest.mark.timeout(120)

NOT_SERVING = "not ready: the pg_queue broker is not serving (since "


def test_readyz_fails_while_the_database_is_away_though_every_worker_is_busy(
    start_service: Callable[..., ServiceProcess],
    pg_dsn: str,
    pg_conn: Conn,
    evidence: Evidence,
    tmp_path: Path,
) -> None:
    proxy = DatabaseProxy(pg_dsn)
    proxy.up()
    gate = tmp_path / "gate"
    port = free_port()
    try:
        with own_schema(pg_dsn) as schema:
            config = queue_config(proxy.dsn, schema, "busy", lease=3)
            config["service"]["pool"] = {"min_workers": 1, "max_workers": 1}
            config["service"]["metrics"] = {"host": "127.0.0.1", "port": port}
            service = start_service(config)
            assert wait_until(lambda: probe(port, "/readyz") == (200, "ready\n"), 20)
            message = job_message("wait_for_file", evidence.path, str(gate))
            uuids = enqueue(pg_conn, schema, "busy", [message])
            evidence.wait_for(1)  # the only worker is busy: no claim runs meanwhile

            proxy.down()
            _status, body = wait_until(
                lambda: (answer := probe(port, "/readyz"))[0] == 503 and answer, 20
            )
            assert body.startswith(NOT_SERVING), body
            assert probe(port, "/livez") == (200, "alive\n")

            proxy.up()  # back while the worker is still busy: ready again
            assert wait_until(lambda: probe(port, "/readyz") == (200, "ready\n"), 20)
            gate.touch()
            wait_for_states(pg_conn, schema, uuids, {"done"})
            assert service.stop() == 0
    finally:
        proxy.down()

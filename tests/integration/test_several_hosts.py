"""A conninfo naming several hosts (``host=db1,db2``), as for a primary and its standbys: the
service's log names the host it reached, not the list."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from support.proxy import DatabaseProxy
from support.service import ServiceProcess

pytestmark = pytest.mark.timeout(60)


def test_the_log_names_the_host_reached(
    start_service: Callable[..., ServiceProcess], service_config: dict[str, Any], pg_dsn: str
) -> None:
    down = DatabaseProxy(pg_dsn)  # the first host: nothing listens there
    port = conninfo_to_dict(pg_dsn).get("port") or 5432
    several = make_conninfo(pg_dsn, host="127.0.0.1,127.0.0.1", port=f"{down.port},{port}")
    service_config["brokers"]["pg_notify"]["conninfo"] = several
    service = start_service(service_config)
    (line,) = service.wait_for_log(r"listening on channels")
    assert f"(PostgreSQL at 127.0.0.1, port {port}, database" in line
    assert service.stop() == 0

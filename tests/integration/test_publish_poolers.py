"""Publishing through a pooler in transaction mode (pgbouncer): the SDK prepares nothing.

Such a pooler loses a prepared statement between transactions, or hands its name (psycopg's
``_pg3_0``) to another client's server session; publishers are told to use one. What the
SDK's own session holds prepared is read from the server, on that session.
"""

from __future__ import annotations

import pytest
from psycopg.conninfo import make_conninfo

from dispatcher.config import reset, setup
from dispatcher.publish import close_connections, submit_task
from dispatcher.publish.provider_registry_sync import shared_provider


@pytest.mark.parametrize("pooled", [True, False])
def test_publishers_marked_as_behind_a_transaction_pooler_prepare_nothing(
    pg_dsn: str, channel: str, pooled: bool
) -> None:
    conninfo = make_conninfo(pg_dsn, application_name=f"pooled_{channel}"[:63])
    pg_notify = {"conninfo": conninfo, "channels": [channel], "transaction_pooler": pooled}
    setup({"version": 1, "brokers": {"pg_notify": pg_notify}})
    try:
        for n in range(10):  # psycopg prepares a statement at its fifth run
            submit_task("myapp.tasks.work", args=[n])
        session = shared_provider(conninfo).connection()
        row = session.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()
    finally:
        close_connections()
        reset()
    assert row is not None
    assert (row[0] == 0) == pooled

"""``prefetch: auto`` over a fleet: a burst of long jobs spreads over the services.

With 100 jobs held ahead whatever their length, the first service to claim took a whole
burst of long jobs and ran them two at a time, while the others idled (60 jobs of 2 s over
20 services of 2 workers: 60 s, against 6 s with no job held ahead).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from support.durable import enqueue, job_message, migrated, queue_config, wait_for_states
from support.queue_rows import unique_schema
from support.service import Evidence, ServiceProcess

pytestmark = pytest.mark.timeout(90)

Conn = psycopg.Connection[Any]
Start = Callable[..., ServiceProcess]


@pytest.fixture
def schema(pg_conn: Conn) -> str:
    return migrated(pg_conn, unique_schema())


def test_a_burst_of_long_jobs_is_shared_by_the_services_of_the_queue(
    start_service: Start,
    pg_conn: Conn,
    pg_dsn: str,
    schema: str,
    channel: str,
    evidence: Evidence,
) -> None:
    """Two idle services of 2 workers each, the default prefetch: 8 jobs of 0.7 s run on
    both (each claims what its free workers can start, then one job per freed worker)."""
    for node in ("pf-a", "pf-b"):
        config = queue_config(pg_dsn, schema, channel)  # prefetch left to its default
        config["service"].update(node_id=node, pool={"min_workers": 2, "max_workers": 2})
        start_service(config)
    messages = [job_message("sleep_then_record", evidence.path, 0.7, str(n)) for n in range(8)]
    uuids = enqueue(pg_conn, schema, channel, messages)
    rows = wait_for_states(pg_conn, schema, uuids, {"done"}, timeout=30)
    ran = Counter(row["node_id"] for row in rows)
    assert set(ran) == {"pf-a", "pf-b"}, ran
    assert all(row["attempts"] == 1 for row in rows)

"""``prefetch: auto`` over a fleet: jobs go to the services that can start them.

With 100 jobs held ahead whatever their length, the first service to claim took a whole
burst of long jobs and ran them two at a time, while the others idled (60 jobs of 2 s over
20 services of 2 workers: 60 s, against 6 s with no job held ahead). And a service whose
workers were all on long jobs held the quick jobs of a queue it shares, at the pace of the
quick jobs that ended before, until its long jobs ended (15 s), while another service of
that queue had free workers.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from support.durable import enqueue, job_message, jobs, migrated, queue_config, wait_for_states
from support.queue_rows import unique_schema
from support.service import Evidence, ServiceProcess, wait_until

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


def test_a_service_busy_on_long_jobs_leaves_a_shared_queues_quick_jobs_to_the_others(
    start_service: Start,
    pg_conn: Conn,
    pg_dsn: str,
    schema: str,
    channel: str,
    evidence: Evidence,
    tmp_path: Path,
) -> None:
    """A service with both workers on long jobs, after quick ones that made its pace quick,
    holds none of a stream of quick jobs of a queue it shares: the other service, idle,
    runs them all (it held them until its long jobs ended, up to a hundred ahead)."""
    long_queue, quick_queue = f"{channel}_long", f"{channel}_quick"
    busy = queue_config(pg_dsn, schema, long_queue)  # prefetch left to its default
    busy["brokers"]["pg_queue"]["queues"] = [long_queue, quick_queue]
    busy["service"].update(node_id="pf-busy", pool={"min_workers": 2, "max_workers": 2})
    start_service(busy)
    idle = queue_config(pg_dsn, schema, quick_queue)
    idle["service"].update(node_id="pf-idle", pool={"min_workers": 2, "max_workers": 2})
    start_service(idle)
    # Quick jobs that only the busy service serves: its pace is quick (a hundred ahead).
    quick = enqueue(pg_conn, schema, long_queue, [job_message("noop") for _ in range(20)])
    wait_for_states(pg_conn, schema, quick, {"done"})
    gate = tmp_path / "gate"
    long_jobs = enqueue(
        pg_conn,
        schema,
        long_queue,
        [job_message("wait_for_file", evidence.path, str(gate), str(n)) for n in range(2)],
    )
    started = evidence.wait_for(2)
    # Both workers have been busy longer than the half second of work held ahead.
    wait_until(lambda: time.time() - max(record["time"] for record in started) > 0.6, 5)
    stream: list[str] = []
    for _ in range(30):
        stream += enqueue(pg_conn, schema, quick_queue, [job_message("noop")])
        time.sleep(0.03)  # a stream, not a burst: each job is a claim of its own

    def settled() -> list[dict[str, Any]] | None:
        rows = jobs(pg_conn, schema, stream)
        # Done, or held by the busy service (which starts none before its long jobs end).
        held = [row for row in rows if row["state"] == "running" and row["node_id"] == "pf-busy"]
        return rows if all(row["state"] == "done" for row in rows) or held else None

    rows = wait_until(settled, 20)
    ran = Counter((row["node_id"], row["state"]) for row in rows)
    assert ran == {("pf-idle", "done"): len(stream)}, ran
    gate.touch()
    wait_for_states(pg_conn, schema, long_jobs, {"done"})

"""What a service keeps of a deadline that no longer matters: nothing.

A task's ``timeout`` is a deadline the service keeps while the task runs. Quick tasks sent
with a long timeout (an hour, a day) end long before it: the service must not keep them,
message and all, until the hour is over, or its memory grows with every such task it runs
for as long as the timeout (a day of tasks, for a timeout of a day). Measured from outside:
the resident memory of the service's main process.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from support.service import ServiceProcess, socket_control, vm_rss_bytes, wait_until

StartService = Callable[..., ServiceProcess]

PADDING = 4_000
"""Characters of argument in each task's message."""

# Made by PostgreSQL: a batch of tasks of the test's own, in one statement.
TASKS = """
SELECT pg_notify(%(channel)s, json_build_object(
    'task', 'support.service_tasks.ignore', 'uuid', format('%%s-%%s', %(batch)s::text, n),
    'args', json_build_array(repeat('p', %(padding)s::int)), 'timeout', %(timeout)s::float)::text)
FROM generate_series(1, %(count)s::int) AS n
"""


def finished_ok(service: ServiceProcess) -> int:
    return int(socket_control(service, "status")["finished"].get("ok", 0))


def run_batches(
    service: ServiceProcess, pg_dsn: str, channel: str, name: str, timeout: float, count: int
) -> None:
    """Run *count* padded tasks with *timeout*, a batch at a time (no backlog builds up)."""
    per_batch = 250
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for batch in range(count // per_batch):
            target = finished_ok(service) + per_batch
            params = {"channel": channel, "batch": f"{name}-{batch}", "padding": PADDING,
                      "timeout": timeout, "count": per_batch}  # fmt: skip
            conn.execute(TASKS, params)
            wait_until(lambda target=target: finished_ok(service) >= target, timeout=60)


@pytest.mark.timeout(180)
def test_quick_tasks_with_a_long_timeout_are_not_kept_once_they_end(
    start_service: StartService,
    service_config: dict[str, Any],
    tmp_path: Path,
    pg_dsn: str,
    channel: str,
) -> None:
    service_config["brokers"]["socket"] = {"path": str(tmp_path / "d.sock")}
    service = start_service(service_config)
    count = 8_000
    # The same tasks without a timeout first: what the allocator keeps for them is not
    # counted.
    run_batches(service, pg_dsn, channel, "warm-up", 0, count)
    baseline = vm_rss_bytes(service.pid)
    run_batches(service, pg_dsn, channel, "long", 3600, count)
    grown = vm_rss_bytes(service.pid) - baseline
    # Kept until their timeout, the messages alone would be count * PADDING = 32 MB.
    assert grown < 8 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB over {count} tasks"
    assert finished_ok(service) == 2 * count
    assert "Traceback" not in service.log

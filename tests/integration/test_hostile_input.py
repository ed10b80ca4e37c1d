"""Hostile input against a running service: it rejects by name, and its memory stays bounded."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dispatcher.schema import MAX_NESTING_DEPTH
from support.service import Evidence, ServiceProcess, task_message, vm_rss_bytes, wait_until
from support.service import socket_control as control

StartService = Callable[..., ServiceProcess]
Notify = Callable[[str, str], None]

DEEP = "[" * 2000 + "]" * 2000
TOO_DEEP_LINE = rf"rejected message on channel .*nested more than {MAX_NESTING_DEPTH} levels deep"


@pytest.fixture
def with_socket(service_config: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    service_config["brokers"]["socket"] = {"path": str(tmp_path / "d.sock")}
    return service_config


def test_a_deep_socket_line_is_rejected_and_the_service_carries_on(
    start_service: StartService, with_socket: dict[str, Any], evidence: Evidence
) -> None:
    service = start_service(with_socket)
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(with_socket["brokers"]["socket"]["path"])
        client.sendall(
            (DEEP + "\n" + task_message("record", evidence.path, "after") + "\n").encode()
        )
        assert [r["args"] for r in evidence.wait_for(1)] == [["after"]]
    assert control(service, "status")["rejected"] == {"too_deep": 1}
    [line] = service.wait_for_log(TOO_DEEP_LINE)
    assert "socket" in line
    assert "Traceback" not in service.log
    assert service.process is not None
    assert service.process.poll() is None


def test_a_deep_notify_is_one_log_line_and_no_traceback(
    start_service: StartService,
    with_socket: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    service = start_service(with_socket)
    for _ in range(3):
        notify(channel, '{"task": "support.service_tasks.record", "args": ' + DEEP + "}")
    notify(channel, task_message("record", evidence.path, "after"))
    evidence.wait_for(1)
    assert control(service, "status")["rejected"] == {"too_deep": 3}
    assert len(service.wait_for_log(TOO_DEEP_LINE, count=3)) == 3
    assert len(re.findall("rejected message", service.log)) == 3
    assert "Traceback" not in service.log
    assert "internal error" not in service.log


def test_integral_float_index_and_total_are_honoured(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    start_service(service_config)
    whole = task_message("record", evidence.path, "one slice")
    envelope = {"__dispatcherd_chunk__": "v1", "message_id": "f1", "payload": whole}
    notify(channel, json.dumps({**envelope, "index": 0.0, "total": 1.0}))
    middle = len(whole) // 2
    for index, part in ((1.0, whole[middle:]), (0, whole[:middle])):
        notify(
            channel,
            json.dumps(
                {**envelope, "message_id": "f2", "index": index, "total": 2.0, "payload": part}
            ),
        )
    assert sorted(r["args"][0] for r in evidence.wait_for(2)) == ["one slice", "one slice"]


# The envelopes are made by PostgreSQL: made here and sent as an array of 8 MB a batch, they
# took half the test's time, which went past 60 s on a machine loaded five times over (some
# 8 s on a busy one now).
FIRST_SLICES = """
SELECT pg_notify(%(channel)s, json_build_object(
    '__dispatcherd_chunk__', 'v1', 'message_id', format('flood-%%s-%%s', %(batch)s::int, n),
    'index', 0, 'total', 10000, 'payload', repeat('p', %(size)s::int))::text)
FROM generate_series(1, %(count)s::int) AS n
"""


@pytest.mark.timeout(120)
def test_a_flood_of_first_slices_keeps_memory_bounded(
    start_service: StartService, with_socket: dict[str, Any], pg_dsn: str, channel: str
) -> None:
    cap = 8 * 1024 * 1024
    with_socket["service"]["limits"] = {"max_partial_bytes": cap}
    service = start_service(with_socket)
    baseline = vm_rss_bytes(service.pid)
    batches, per_batch = 20, 1_000
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for batch in range(batches):
            conn.execute(
                FIRST_SLICES,
                {"channel": channel, "batch": batch, "size": 7_800, "count": per_batch},
            )
            seen = (batch + 1) * per_batch

            def caught_up(seen: int = seen) -> dict[str, Any] | None:
                chunks = control(service, "chunks")["status"]
                return chunks if chunks["active_messages"] + chunks["evicted"] >= seen else None

            chunks = wait_until(caught_up, timeout=60, interval=0.05)
    grown = vm_rss_bytes(service.pid) - baseline
    assert chunks["active_bytes"] <= cap
    assert chunks["active_messages"] <= 1_000
    evicted = control(service, "status")["rejected"]["chunk_evicted"]
    assert evicted == chunks["evicted"] >= batches * per_batch - 1_100
    slack = 32 * 1024 * 1024  # decoding buffers, the allocator's own keeping
    assert grown < cap + slack, f"RSS grew by {grown / 2**20:.1f} MiB"
    assert "Traceback" not in service.log

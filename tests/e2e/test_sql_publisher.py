"""Publishing without Python: dispatcher_submit() from psql, and a raw pg_notify."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from support.service import Evidence, ServiceProcess

RECORD = "support.service_tasks.record"


def psql(dsn: str, query: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["psql", dsn, "-v", "ON_ERROR_STOP=1", "-Atc", query],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def service(
    start_service: Callable[..., ServiceProcess], service_config: dict[str, Any]
) -> ServiceProcess:
    service = start_service(service_config)
    installed = subprocess.run(
        [
            sys.executable,
            "-m",
            "dispatcher.server.ctl",
            "install-sql",
            "--config",
            str(service.config_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert installed.returncode == 0, installed.stderr
    assert installed.stdout.startswith("installed dispatcher_submit() in PostgreSQL at ")
    return service


def test_psql_dispatcher_submit_runs_small_and_chunked_tasks(
    service: ServiceProcess, pg_dsn: str, channel: str, evidence: Evidence
) -> None:
    small = psql(
        pg_dsn,
        f"SELECT dispatcher_submit('{channel}', '{RECORD}', '[\"{evidence.path}\", \"from sql\"]', '{{\"k\": 1}}', '{{\"timeout\": 30}}')",
    )
    assert small.returncode == 0, small.stderr
    big = psql(
        pg_dsn,
        f"SELECT dispatcher_submit('{channel}', '{RECORD}', jsonb_build_array('{evidence.path}', repeat('\"é\\\\', 20000)))",
    )
    assert big.returncode == 0, big.stderr
    records = evidence.wait_for(2)
    by_first_arg = {r["args"][0][:8]: r for r in records}
    assert by_first_arg["from sql"]["kwargs"] == {"k": 1}
    # SQL's standard strings keep both backslashes: each repeat is `"é\\` (4 characters).
    assert any(r["args"][0] == '"é\\\\' * 20000 for r in records)


def test_raw_pg_notify_from_psql(
    service: ServiceProcess, pg_dsn: str, channel: str, evidence: Evidence
) -> None:
    payload = json.dumps({"task": RECORD, "args": [str(evidence.path), "raw"]})
    result = psql(pg_dsn, f"SELECT pg_notify('{channel}', '{payload}')")
    assert result.returncode == 0, result.stderr
    assert evidence.wait_for(1)[0]["args"] == ["raw"]


@pytest.mark.parametrize(
    ("call", "error"),
    [
        ("dispatcher_submit('has space', 'a.b')", "channel 'has space': not a valid channel name"),
        ("dispatcher_submit('c', 'lambda: 1')", "task 'lambda: 1': not a valid task name"),
        ("dispatcher_submit('c', 'a.b', '{}')", "args must be a JSON array, got object"),
        (
            "dispatcher_submit('c', 'a.b', '[]', '{}', '{\"timeout\": -1}')",
            "options.timeout: must be between 0 and 31536000",
        ),
        (
            "dispatcher_submit('c', 'a.b', '[]', '{}', '{\"on_duplicate\": \"x\"}')",
            'options.on_duplicate: "x" is not one of',
        ),
        (
            "dispatcher_submit('c', 'a.b', '[]', '{}', '{\"retries\": 3}')",
            "options: unknown key(s) retries",
        ),
    ],
)
def test_bad_calls_are_refused_with_a_reason(
    service: ServiceProcess, pg_dsn: str, call: str, error: str
) -> None:
    result = psql(pg_dsn, f"SELECT {call}")
    assert result.returncode != 0
    assert f"dispatcher_submit: {error}" in result.stderr


def test_install_sql_can_print_the_sql() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dispatcher.server.ctl", "install-sql", "--print"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    assert "CREATE OR REPLACE FUNCTION dispatcher_submit(" in result.stdout

"""The harness's choice of PostgreSQL when ``$DISPATCHER_TEST_DSN`` names a dead server.

Nothing must be taken for "no right to create databases, share the given one": the session
stops at its start, naming the variable and the reason, instead of every test that needs the
database failing on its own (a service test only after waiting 20 s for its start).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from support import postgres
from support.paths import REPO


@pytest.fixture
def dead_dsn() -> Iterator[str]:
    """A DSN whose port is held by a socket that never listens: connections are refused."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        yield f"host=127.0.0.1 port={port} user=postgres dbname=postgres"


def test_a_dead_configured_dsn_is_refused_with_its_name_and_reason(
    dead_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(postgres.TEST_DSN_ENV, dead_dsn)
    with (
        pytest.raises(postgres.DeadTestDatabase) as refused,
        postgres.test_database(),
    ):
        pytest.fail("a dead DSN was yielded")
    message = str(refused.value)
    assert message.startswith(f"{postgres.TEST_DSN_ENV}='{dead_dsn}' does not answer: ")
    assert "connection refused" in message.lower()


def test_own_database_shares_the_dsn_only_without_the_right_to_create(dead_dsn: str) -> None:
    with pytest.raises(psycopg.OperationalError), postgres.own_database(dead_dsn):
        pytest.fail("a dead DSN was yielded as a database to share")


@pytest.mark.timeout(60)
def test_the_session_stops_at_its_start_naming_the_variable(dead_dsn: str) -> None:
    env = {name: value for name, value in os.environ.items() if not name.startswith("PYTEST")}
    env[postgres.TEST_DSN_ENV] = dead_dsn
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/integration/test_postgres_harness.py",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
    )
    elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, output
    assert f"{postgres.TEST_DSN_ENV}='{dead_dsn}' does not answer: Connection refused" in output
    assert not re.search(r"\d+ (passed|failed|errors?)", output), output  # no test ran
    assert elapsed < 20, output

"""The example app's test suite (docs/examples/testing) passes where no database is reachable.

It uses dispatcher.testing through its pytest plugin, as a user's suite would, and runs as a
separate ``python -m pytest`` with no config and libpq pointed at a closed port.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from support.paths import REPO

EXAMPLE = REPO / "docs" / "examples" / "testing"


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port  # nothing listens once the probe is closed


@pytest.fixture
def no_database_env() -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PG", "DISPATCHER", "PYTEST", "PYTHONPATH"))
    }
    env.update(PGHOST="127.0.0.1", PGPORT=str(closed_port()), PGCONNECT_TIMEOUT="2")
    return env


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    folder = tmp_path / "shop"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("__pycache__"))
    return folder


@pytest.mark.timeout(120)
def test_the_sample_suite_passes_without_a_database(
    sample: Path, no_database_env: dict[str, str]
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error"],
        cwd=sample,
        env=no_database_env,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 passed" in result.stdout


@pytest.mark.timeout(120)
def test_without_dispatcher_testing_the_same_app_needs_the_database(
    sample: Path, no_database_env: dict[str, str]
) -> None:
    """The control: in that environment, publishing for real fails."""
    script = (
        "import orders\n"
        "from dispatcher.config import setup\n"
        "from dispatcher.publish import BrokerUnavailable\n"
        "setup({'version': 1, 'brokers': {'pg_notify': {'conninfo': 'dbname=postgres', 'channels': ['emails']}}})\n"
        "try:\n"
        "    orders.send_confirmation.delay(1, 'a@example.com')\n"
        "except BrokerUnavailable as exc:\n"
        "    print('unavailable:', exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=sample,
        env=no_database_env,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("unavailable:"), result.stdout
    assert "Connection refused" in result.stdout

"""A pg_notify broker with no channel: what the service logs, what dispatcherctl advises."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from support.service import ServiceProcess

pytestmark = pytest.mark.timeout(60)

Start = Callable[..., ServiceProcess]


def no_channel(pg_dsn: str) -> dict[str, Any]:
    return {
        "version": 1,
        "brokers": {"pg_notify": {"conninfo": pg_dsn, "channels": []}},
        "tasks": {"modules": ["support.service_tasks"]},
        "service": {"pool": {"min_workers": 1, "max_workers": 1}},
    }


def test_a_service_with_no_channel_says_so_rather_than_listing_none(
    start_service: Start, pg_dsn: str
) -> None:
    service = start_service(no_channel(pg_dsn))
    (line,) = service.wait_for_log(r"listening on")
    assert "listening on channels" not in line
    assert line.endswith(
        "): brokers.pg_notify.channels is empty, so no task nor control command comes this way"
    )
    assert "INFO dispatcher.listener: listening on no channel (PostgreSQL at " in line


@pytest.mark.parametrize("command", [["status"], ["running"], ["alive"]])
def test_dispatcherctl_without_a_control_channel_gives_advice_for_the_command_line(
    pg_dsn: str, tmp_path: Path, command: list[str]
) -> None:
    config = tmp_path / "dispatcher.yml"
    config.write_text(json.dumps(no_channel(pg_dsn)))
    done = subprocess.run(
        [sys.executable, "-m", "dispatcher.server.ctl", *command, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "queue=" not in done.stderr
    assert done.stderr == (
        "dispatcherctl: cannot send control commands: no channel; set "
        f"brokers.pg_notify.default_publish_channel in {config} to a channel the services "
        "listen on (one of their brokers.pg_notify.channels)\n"
    )

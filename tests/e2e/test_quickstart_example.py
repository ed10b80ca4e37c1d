"""The example app's three steps work: tasks, service, publisher."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dispatcher.config import reset, setup
from dispatcher.control import control_with_reply
from support.paths import REPO
from support.service import ServiceProcess, wait_until


@pytest.fixture
def example(tmp_path: Path, channel: str) -> Path:
    folder = tmp_path / "quickstart"
    shutil.copytree(REPO / "docs" / "examples" / "quickstart", folder)
    tasks = folder / "tasks.py"
    tasks.write_text(tasks.read_text().replace('queue="quickstart"', f'queue="{channel}"'))
    return folder


@pytest.mark.timeout(120)
def test_publisher_script_submits_to_the_service(
    example: Path, start_service: Callable[..., ServiceProcess], pg_dsn: str, channel: str
) -> None:
    config: dict[str, Any] = {
        "version": 1,
        "brokers": {"pg_notify": {"conninfo": pg_dsn, "channels": [channel]}},
        "tasks": {"modules": ["tasks"]},
        "service": {"node_id": channel, "pool": {"min_workers": 2, "max_workers": 4}},
    }
    service = start_service(config, env={"PYTHONPATH": str(example)})
    (example / "dispatcher.yml").write_text(service.config_path.read_text())
    published = subprocess.run(
        [sys.executable, "publish.py"], cwd=example, capture_output=True, text=True, timeout=60
    )
    assert published.returncode == 0, published.stderr
    assert published.stdout == "submitted 4 tasks; see the service's log\n"
    setup(config)
    try:

        def finished() -> dict[str, int]:
            [status] = control_with_reply("status", expected_replies=1).replies
            done: dict[str, int] = status["finished"]
            return done if sum(done.values()) == 4 else {}

        assert wait_until(finished, timeout=20) == {"ok": 2, "timeout": 1, "error": 1}
    finally:
        reset()

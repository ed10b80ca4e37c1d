"""dispatcherd's own tools talk to our service: its dispatcherctl gets our replies."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from support.dispatcherd import environment
from support.service import ServiceProcess


@pytest.fixture
def dispatcherd_env() -> Path:
    """dispatcherd's virtual environment (made once for the whole suite; else the test skips)."""
    return environment().root


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_dispatcherd_dispatcherctl_alive_gets_our_reply(
    dispatcherd_env: Path,
    start_service: Callable[..., ServiceProcess],
    service_config: dict[str, Any],
    pg_dsn: str,
    channel: str,
    tmp_path: Path,
) -> None:
    service_config["service"]["node_id"] = "ours"
    start_service(service_config)
    theirs = tmp_path / "dispatcherd.yml"  # dispatcherd's own config layout (version 2)
    theirs.write_text(
        json.dumps(
            {
                "version": 2,
                "brokers": {
                    "pg_notify": {
                        "config": {"conninfo": pg_dsn},
                        "channels": [channel],
                        "default_publish_channel": channel,
                    }
                },
                "publish": {"default_broker": "pg_notify"},
            }
        )
    )
    result = subprocess.run(
        [str(dispatcherd_env / "bin" / "dispatcherctl"), "alive", "--config", str(theirs)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "node_id: ours" in result.stdout

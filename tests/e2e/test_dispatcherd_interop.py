"""dispatcherd's own tools talk to our service: its dispatcherctl gets our replies."""

from __future__ import annotations

import json
import subprocess
import venv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from support.service import ServiceProcess

DISPATCHERD = "dispatcherd==2026.5.27"


@pytest.fixture(scope="module")
def dispatcherd_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment with dispatcherd from PyPI."""
    env = tmp_path_factory.mktemp("dispatcherd") / "venv"
    venv.create(env, with_pip=True)
    install = subprocess.run(
        [
            str(env / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            DISPATCHERD,
            "psycopg[binary]",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if install.returncode != 0:
        pytest.skip(f"cannot install {DISPATCHERD} from the package index: {install.stderr[-500:]}")
    return env


@pytest.mark.slow
@pytest.mark.timeout(900)
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

"""The code blocks of the README and the getting-started guide do what they say."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict
from ruamel.yaml import YAML

from dispatcher.config import load_settings
from support.paths import REPO
from support.service import Evidence, ServiceProcess

DOCS = [REPO / "README.md", REPO / "docs" / "getting-started.md"]


def blocks(path: Path, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", path.read_text(encoding="utf-8"), re.DOTALL)


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_yaml_block_is_a_valid_config(path: Path) -> None:
    found = blocks(path, "yaml")
    assert found
    for block in found:
        load_settings(YAML(typ="safe").load(block))


def test_getting_started_matches_the_example_app() -> None:
    guide = (REPO / "docs" / "getting-started.md").read_text(encoding="utf-8")
    example = REPO / "docs" / "examples" / "quickstart"
    [config] = blocks(REPO / "docs" / "getting-started.md", "yaml")
    assert YAML(typ="safe").load(config) == YAML(typ="safe").load(
        (example / "dispatcher.yml").read_text()
    )
    for line in ("def hello(name: str) -> str:", '@task(queue="quickstart", timeout=1)'):
        assert line in guide
        assert line in (example / "tasks.py").read_text()


def psql_env(dsn: str) -> dict[str, str]:
    params = conninfo_to_dict(dsn)
    names = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "dbname": "PGDATABASE"}
    return {**os.environ, **{env: str(params[key]) for key, env in names.items() if key in params}}


def test_readme_psql_one_liners_submit_tasks_that_run(
    start_service: Callable[..., ServiceProcess],
    service_config: dict[str, Any],
    pg_dsn: str,
    channel: str,
    evidence: Evidence,
) -> None:
    service = start_service(service_config)
    installed = subprocess.run(
        [
            "python",
            "-m",
            "dispatcher.server.ctl",
            "install-sql",
            "--config",
            str(service.config_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=psql_env(pg_dsn),
    )
    assert installed.returncode == 0, installed.stderr
    lines = [
        line
        for block in blocks(REPO / "README.md", "sh")
        for line in block.splitlines()
        if line.startswith("psql -c")
    ]
    assert len(lines) == 2
    for line in lines:
        command = (
            line.replace("test_channel", channel)
            .replace("myapp.tasks.send_email", "support.service_tasks.record")
            .replace("someone@example.com", str(evidence.path))
        )
        result = subprocess.run(
            command, shell=True, capture_output=True, text=True, timeout=60, env=psql_env(pg_dsn)
        )
        assert result.returncode == 0, result.stderr
    assert len(evidence.wait_for(2)) == 2
    assert json.loads(json.dumps(evidence.records()))[0]["args"] == []


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
@pytest.mark.timeout(120)
def test_service_and_dispatcherctl_lines_work_as_written(
    path: Path, tmp_path: Path, pg_dsn: str, channel: str
) -> None:
    import contextlib
    import signal
    import time

    from support.service import TESTS

    configs = [YAML(typ="safe").load(block) for block in blocks(path, "yaml")]
    config = next(c for c in configs if "tasks" in c)  # the service's config
    config["brokers"]["pg_notify"].update(conninfo=pg_dsn, channels=[channel])
    config["tasks"]["modules"] = ["support.service_tasks"]
    config.setdefault("service", {})["node_id"] = channel
    if "metrics" in config["service"]:  # any free port: tests may run side by side
        config["service"]["metrics"]["port"] = 0
    (tmp_path / "dispatcher.yml").write_text(json.dumps(config))
    lines = [line for block in blocks(path, "sh") for line in block.splitlines()]
    [start] = [line for line in lines if line.startswith("dispatcher-standalone")]
    ctl_lines = [line for line in lines if line.startswith("dispatcherctl")]
    assert ctl_lines
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    # `exec`: the shell becomes the service, so the signal and exit status are the service's.
    with subprocess.Popen(
        f"exec {start}",
        shell=True,
        cwd=tmp_path,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ) as service:
        try:
            deadline = time.monotonic() + 30
            while True:
                result = subprocess.run(
                    ctl_lines[0],
                    shell=True,
                    cwd=tmp_path,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                if result.returncode == 0 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert result.returncode == 0, result.stderr
            assert f"{channel}:" in result.stdout
        finally:
            service.send_signal(signal.SIGTERM)
            status = service.wait(30)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(service.pid, signal.SIGKILL)  # whatever is left, if the test failed
        assert status == 0

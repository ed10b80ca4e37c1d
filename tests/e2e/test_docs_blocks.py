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

"""What a service's main process imports and compiles, for its memory at idle (issue 13).

Every module the main process imports, and every validator it compiles, after the fork
server is forked takes memory of its own (``benchmarks/footprint.py`` measures it): a
service imports only the modules of what its config asks for, and compiles its validators
before the fork (``dispatcher-standalone`` calls ``compile_validators`` then). Each case runs
in a fresh interpreter: what this test process imported already would hide the imports.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BUILD = """
import json, logging, sys

from dispatcher.config import setup
from dispatcher.server.service import Service

Service(setup(json.loads(sys.argv[1])), logging.WARNING)
print(json.dumps(sorted(sys.modules)))
"""

COMPILE_THEN_BUILD = """
import json, logging, sys

from dispatcher.config import setup
from dispatcher.schema.validation import _validator
from dispatcher.server.cli import compile_validators

settings = setup(json.loads(sys.argv[1]))
compile_validators()  # (where dispatcher-standalone forks the fork server)
compiled = _validator.cache_info().currsize
from dispatcher.server.service import Service

Service(settings, logging.WARNING)
print(json.dumps(_validator.cache_info().currsize - compiled))
"""

PG_NOTIFY = {"conninfo": "dbname=x", "channels": ["jobs"]}

LAZY = (
    "dispatcher.server.brokers.pg_queue",
    "dispatcher.server.brokers.socket",
    "dispatcher.server.metrics",
    "dispatcher.server.cron",
    "dispatcher.server.reload",
    "dispatcher.server.ctl",
    "dispatcher.server.ctl_",
    "croniter",
    "jsonschema",
    "rich",
    "watchfiles",
)
"""Modules (with their submodules; a name ending in ``_`` stands for every module whose name
starts so) that a service with a plain pg_notify config has no use for."""


def run(probe: str, config: dict[str, Any]) -> Any:
    """What *probe* prints (JSON), run in a fresh interpreter with the config *config*."""
    done = subprocess.run(
        [sys.executable, "-c", probe, json.dumps(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def imported(modules: list[str], lazy: str) -> list[str]:
    """The names of *modules* that *lazy* (an entry of :data:`LAZY`) stands for."""
    if lazy.endswith("_"):
        return [name for name in modules if name.startswith(lazy)]
    return [name for name in modules if name == lazy or name.startswith(f"{lazy}.")]


@pytest.mark.timeout(90)
def test_a_plain_pg_notify_service_imports_nothing_it_does_not_use() -> None:
    modules = run(BUILD, {"version": 1, "brokers": {"pg_notify": PG_NOTIFY}})
    found = {lazy: imported(modules, lazy) for lazy in LAZY}
    assert {lazy: names for lazy, names in found.items() if names} == {}
    assert "dispatcher.server.brokers.pg_notify.broker" in modules


@pytest.mark.timeout(90)
def test_the_modules_of_what_the_config_asks_for_are_imported(tmp_path: Path) -> None:
    config = {
        "version": 1,
        "brokers": {
            "pg_notify": PG_NOTIFY,
            "socket": {"path": str(tmp_path / "d.sock")},
            "pg_queue": {"conninfo": "dbname=x", "queues": ["mail"]},
        },
        "service": {"metrics": {}},
    }
    modules = run(BUILD, config)
    for name in (
        "dispatcher.server.brokers.socket",
        "dispatcher.server.brokers.pg_queue.broker",
        "dispatcher.server.brokers.pg_queue.sampler",
        "dispatcher.server.metrics",
    ):
        assert name in modules


@pytest.mark.timeout(90)
def test_the_service_compiles_no_validator_after_the_fork() -> None:
    assert run(COMPILE_THEN_BUILD, {"version": 1, "brokers": {"pg_notify": PG_NOTIFY}}) == 0

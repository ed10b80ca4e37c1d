"""Fixtures of the dispatcherd compatibility suite: dispatcherd's environment, its clients,
its service, and ours.

dispatcherd 2026.5.27 is installed from the package index into a virtual environment of its
own, once (see :mod:`support.dispatcherd`); every test here is skipped, saying why, when it
cannot be.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dispatcher.config import Settings, reset, setup
from dispatcher.publish import close_connections
from support import dispatcherd
from support.dispatcherd import Dispatcherd, DispatcherdService, Driver
from support.postgres import unique_channel


@pytest.fixture(scope="session")
def dispatcherd_env() -> Dispatcherd:
    """dispatcherd's virtual environment (made once, cached under ``.tmp/``)."""
    return dispatcherd.environment()


@pytest.fixture
def other_channel() -> str:
    """A second channel of this test's own."""
    return unique_channel()


@pytest.fixture
def their_config(tmp_path: Path, pg_dsn: str, channel: str, other_channel: str) -> Path:
    """A dispatcherd config file (version 2) on this test's two channels, as its users write."""
    document = dispatcherd.config(pg_dsn, [channel, other_channel])
    return dispatcherd.write_config(tmp_path / "dispatcherd.yml", document)


@pytest.fixture
def driver(
    dispatcherd_env: Dispatcherd, tmp_path: Path, their_config: Path, other_channel: str
) -> Iterator[Driver]:
    """dispatcherd's publisher and ``Control``, loaded with :func:`their_config`."""
    log = tmp_path / "driver.log"
    running = Driver(dispatcherd_env, their_config, log, DISPATCHERD_E2E_QUEUE=other_channel)
    yield running
    running.close()


@pytest.fixture
def start_dispatcherd(
    dispatcherd_env: Dispatcherd, tmp_path: Path
) -> Iterator[Callable[[dict[str, Any]], DispatcherdService]]:
    """Start real dispatcherd services from config documents; all killed at the end."""
    started: list[DispatcherdService] = []

    def start(document: dict[str, Any]) -> DispatcherdService:
        folder = tmp_path / f"dispatcherd-{len(started)}"
        folder.mkdir()
        service = DispatcherdService(dispatcherd_env, document, folder)
        started.append(service)
        return service.wait_ready()

    yield start
    for service in started:
        service.kill_everything()


@pytest.fixture
def our_config(pg_dsn: str, channel: str, other_channel: str) -> dict[str, Any]:
    """Our config (version 1) for clients and a service on this test's two channels."""
    return {
        "version": 1,
        "brokers": {
            "pg_notify": {
                "conninfo": pg_dsn,
                "channels": [channel, other_channel],
                "default_publish_channel": channel,
            }
        },
        "tasks": {"modules": ["support.dispatcherd_tasks_ours"]},
        "service": {"node_id": channel, "pool": {"min_workers": 1, "max_workers": 2}},
    }


@pytest.fixture
def our_config_file(tmp_path: Path, our_config: dict[str, Any]) -> Path:
    """:func:`our_config` in a file, for our ``dispatcherctl``."""
    path = tmp_path / "dispatcher.yml"
    path.write_text(json.dumps(our_config, indent=2))
    return path


@pytest.fixture
def our_clients(our_config: dict[str, Any]) -> Iterator[Settings]:
    """Our publisher and control client in this process, configured with :func:`our_config`."""
    settings = setup(our_config)
    yield settings
    close_connections()
    reset()

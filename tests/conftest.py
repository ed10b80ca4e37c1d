from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest

from support import postgres
from support.examples import scaled_seconds
from support.service import Evidence, ServiceProcess

PROPERTY_TEST_TIMEOUT = 180.0
"""The hang detector of a property test (a Hypothesis ``@given``) that sets none of its own.

A property test does its hundreds of examples on the CPU: the slowest take 20 to 30 s on a
busy machine with two cores, and took 60 to 80 s (the suite's 60 s timeout) where the
machine was loaded five times over. Scaled with the examples (``DISPATCHER_TEST_EXAMPLES``).
"""


def pytest_sessionstart(session: pytest.Session) -> None:
    """Stop at once, naming it, when ``$DISPATCHER_TEST_DSN`` is set and nothing answers there.

    Checked in the controlling process only (before pytest-xdist starts its workers).
    """
    if hasattr(session.config, "workerinput"):
        return
    try:
        postgres.configured_dsn()
    except postgres.DeadTestDatabase as exc:
        raise pytest.UsageError(str(exc)) from None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give each property test without a timeout of its own :data:`PROPERTY_TEST_TIMEOUT`."""
    for item in items:
        is_property_test = getattr(getattr(item, "obj", None), "is_hypothesis_test", False)
        if is_property_test and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(scaled_seconds(PROPERTY_TEST_TIMEOUT)))


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """DSN of a real PostgreSQL for the whole session (see support.postgres)."""
    with postgres.test_database() as dsn:
        yield dsn


@pytest.fixture
def channel() -> str:
    """A channel name unique to this test, so tests never see each other's messages."""
    return postgres.unique_channel()


@pytest.fixture
def pg_conn(pg_dsn: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """An autocommit connection to the test database."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def evidence(tmp_path: Path) -> Evidence:
    """Where this test's tasks write what they did."""
    return Evidence(tmp_path / "evidence.jsonl")


@pytest.fixture
def service_config(pg_dsn: str, channel: str) -> dict[str, Any]:
    """A config for a service on the test database, listening on this test's channel."""
    return {
        "version": 1,
        "brokers": {
            "pg_notify": {
                "conninfo": pg_dsn,
                "channels": [channel],
                "default_publish_channel": channel,
            }
        },
        "tasks": {"modules": ["support.service_tasks"]},
        "service": {"pool": {"min_workers": 1, "max_workers": 2}, "shutdown_grace": 5},
    }


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    """Start services (as subprocesses); they are all killed, with their workers, at the end."""
    started: list[ServiceProcess] = []

    def start(
        config: dict[str, Any],
        *,
        wait: bool = True,
        log_level: str = "INFO",
        env: dict[str, str] | None = None,
        prefix: Sequence[str] = (),
    ) -> ServiceProcess:
        folder = tmp_path / f"service-{len(started)}"
        folder.mkdir()
        service = ServiceProcess(config, folder, log_level, env, prefix).start()
        started.append(service)
        return service.wait_ready() if wait else service

    yield start
    for service in started:
        service.kill_everything()


@pytest.fixture
def notify(pg_conn: psycopg.Connection[Any]) -> Callable[[str, str], None]:
    """Send a raw NOTIFY: notify(channel, payload)."""

    def send(channel: str, payload: str) -> None:
        pg_conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))

    return send

from __future__ import annotations

from collections.abc import Iterator
from importlib.util import find_spec
from typing import Any

import psycopg
import pytest

from dispatcher.config import Settings, reset, setup
from dispatcher.publish import close_connections


@pytest.fixture
def configured(pg_dsn: str, channel: str) -> Iterator[Settings]:
    """The process config: pg_notify on the test database, this test's channel as default."""
    settings = setup(
        {"version": 1, "brokers": {"pg_notify": {"conninfo": pg_dsn, "channels": [channel]}}}
    )
    yield settings
    close_connections()
    reset()


@pytest.fixture
def listener(pg_dsn: str, channel: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection LISTENing on this test's channel."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'LISTEN "{channel}"')
        yield conn


if find_spec("django") is not None:
    # The demo Django project, for the test modules of dispatcher.contrib.django.
    from support.django_site import demo_project, demo_site  # noqa: F401

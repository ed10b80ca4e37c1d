from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from support import postgres


@pytest.fixture(scope="session")
def pg_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """DSN of a real PostgreSQL for the whole session (see support.postgres)."""
    with postgres.test_database(tmp_path_factory.mktemp("embedded-postgres")) as dsn:
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

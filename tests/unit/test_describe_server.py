"""``describe_server``: where a conninfo leads, as log lines and errors name it."""

from __future__ import annotations

import pytest

from dispatcher.publish import describe_server

PG_VARIABLES = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER")


@pytest.fixture(autouse=True)
def no_libpq_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PG_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_what_the_conninfo_leaves_out_comes_from_libpqs_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The password kept out of the config, the rest in PG* variables: every line named
    # "PostgreSQL at the local socket", though libpq connected to 127.0.0.1:5999.
    for name, value in {"PGHOST": "127.0.0.1", "PGPORT": "5999", "PGDATABASE": "app"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PGUSER", "web")
    assert describe_server("connect_timeout=5") == (
        "PostgreSQL at 127.0.0.1, port 5999, database 'app', user 'web'"
    )
    assert describe_server("") == describe_server("connect_timeout=5")
    assert describe_server("host=db port=6432 password=s3cret") == (
        "PostgreSQL at db, port 6432, database 'app', user 'web'"
    )


def test_a_host_written_comes_before_the_environments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGHOST", "from-env")
    assert describe_server("hostaddr=10.0.0.5") == "PostgreSQL at 10.0.0.5"
    monkeypatch.setenv("PGHOSTADDR", "10.0.0.9")
    monkeypatch.delenv("PGHOST")
    assert describe_server("dbname=x") == "PostgreSQL at 10.0.0.9, database 'x'"


def test_without_a_host_anywhere_it_is_the_local_socket() -> None:
    assert describe_server("dbname=app") == "PostgreSQL at the local socket, database 'app'"

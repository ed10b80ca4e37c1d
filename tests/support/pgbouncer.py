"""A pgbouncer of the tests' own in front of the test database, when pgbouncer is installed.

:func:`pgbouncer_binary` finds the program (``None`` when it is not installed: the tests
that need it skip, saying so); :func:`running_pgbouncer` runs one in the given
``pool_mode`` on a free port of 127.0.0.1, with its config in a folder of its own, and
stops it at the end. pgbouncer refuses to run as root: a test run as root runs it as an
unprivileged user (``postgres`` where there is one, else ``nobody``).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from support.proxy import port_socket

PoolMode = Literal["session", "transaction"]

SEARCHED: tuple[str, ...] = ("/usr/sbin", "/usr/local/sbin", "/usr/local/bin")
"""Folders looked in beside ``$PATH`` (Debian installs pgbouncer in ``/usr/sbin``)."""

START_TIMEOUT = 15.0
"""Seconds pgbouncer has to accept a first connection."""


def pgbouncer_binary() -> str | None:
    """The path of the ``pgbouncer`` program, or ``None`` when it is not installed."""
    found = shutil.which("pgbouncer")
    if found is None:
        found = shutil.which("pgbouncer", path=os.pathsep.join(SEARCHED))
    return found


NOT_INSTALLED = "pgbouncer is not installed (apt-get install pgbouncer, or brew install pgbouncer)"
"""The reason a test that needs pgbouncer gives for skipping."""


@dataclass(frozen=True)
class Pgbouncer:
    """A running pgbouncer: *dsn* reaches the test database through it."""

    dsn: str
    pool_mode: PoolMode
    pool_size: int
    log: Path

    def log_text(self) -> str:
        """What pgbouncer logged so far."""
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""


def _unprivileged_user() -> pwd.struct_passwd | None:
    """The user to run pgbouncer as when the tests run as root (``None``: run as we are)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    return None


def _config(target: dict[str, str], port: int, mode: PoolMode, size: int, folder: Path) -> str:
    server = " ".join(
        f"{key}={value}"
        for key, value in target.items()
        if key in ("host", "port", "user", "password") and value
    )
    return "\n".join(
        [
            "[databases]",
            f"* = {server}",
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {port}",
            "unix_socket_dir =",
            "auth_type = trust",
            f"auth_file = {folder / 'users.txt'}",
            f"pool_mode = {mode}",
            f"default_pool_size = {size}",
            "min_pool_size = 0",
            "max_client_conn = 200",
            f"logfile = {folder / 'pgbouncer.log'}",
            "",
        ]
    )


@contextlib.contextmanager
def running_pgbouncer(dsn: str, pool_mode: PoolMode, pool_size: int = 1) -> Iterator[Pgbouncer]:
    """Run a pgbouncer in *pool_mode* in front of *dsn*'s server; yield it; stop it.

    Its clients share *pool_size* server sessions per database and user (1: every client's
    transactions run on the same server session, one after the other). Its DSN names
    *dsn*'s database and user.

    :raises RuntimeError: when pgbouncer is not installed, or does not start (with its log).
    """
    binary = pgbouncer_binary()
    if binary is None:
        raise RuntimeError(NOT_INSTALLED)
    target = {key: str(value) for key, value in conninfo_to_dict(dsn).items()}
    user = target.get("user") or pwd.getpwuid(os.getuid()).pw_name
    folder = Path(tempfile.mkdtemp(prefix="dispatcher-pgbouncer-"))
    runner = _unprivileged_user()
    with port_socket(0) as held:
        port = held.getsockname()[1]
    (folder / "users.txt").write_text(f'"{user}" ""\n', encoding="utf-8")
    (folder / "pgbouncer.ini").write_text(
        _config({**target, "user": user}, port, pool_mode, pool_size, folder), encoding="utf-8"
    )
    if runner is not None:
        for path in (folder, *folder.iterdir()):
            os.chown(path, runner.pw_uid, runner.pw_gid)
    process = subprocess.Popen(
        [binary, str(folder / "pgbouncer.ini")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        user=runner.pw_uid if runner is not None else None,
        group=runner.pw_gid if runner is not None else None,
    )
    bouncer = Pgbouncer(
        make_conninfo(dsn, host="127.0.0.1", port=port, user=user),
        pool_mode,
        pool_size,
        folder / "pgbouncer.log",
    )
    try:
        _wait_until_it_answers(bouncer, process)
        yield bouncer
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(folder, ignore_errors=True)


def _wait_until_it_answers(bouncer: Pgbouncer, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            with psycopg.connect(bouncer.dsn, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError as exc:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"pgbouncer did not start ({exc}); its log:\n{bouncer.log_text()}"
                ) from exc
            time.sleep(0.05)


def server_sessions(bouncer: Pgbouncer) -> list[tuple[object, ...]]:
    """What each server session of *bouncer*'s pool holds, read through the pool itself.

    One row per session (as many clients as the pool's size, each in a transaction, so that
    each holds its own): its ``lock_timeout``, ``statement_timeout``, ``search_path``,
    prepared statements and LISTENed channels, which another client of the pool then meets.
    """
    rows: list[tuple[object, ...]] = []
    with contextlib.ExitStack() as stack:
        for _ in range(bouncer.pool_size):
            conn = stack.enter_context(psycopg.connect(bouncer.dsn, prepare_threshold=None))
            row = conn.execute(
                "SELECT current_setting('lock_timeout'), current_setting('statement_timeout'),"
                " current_setting('search_path'),"
                " (SELECT count(*) FROM pg_prepared_statements),"
                " ARRAY(SELECT pg_listening_channels())"
            ).fetchone()
            assert row is not None
            rows.append(tuple(row))
    return rows

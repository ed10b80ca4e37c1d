"""The demo Django project (tests/django_project) for the tests of dispatcher.contrib.django.

The project is set up in the test process once (Django allows no more): its tables live in a
schema of their own, its tasks go on a channel of their own. Its fixtures, ``demo_project``
and ``demo_site``, are made known to the integration tests by their ``conftest.py``;
:class:`ManagePy` runs one of its ``manage.py`` commands as a subprocess.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import django
import psycopg
import pytest
from django.core.management import call_command
from django.db import connections
from psycopg import sql

from dispatcher.config import reset
from dispatcher.publish import close_connections
from dispatcher.server.brokers.pg_queue.migrations import migrate
from support.postgres import unique_channel
from support.service import wait_until

PROJECT = Path(__file__).resolve().parents[1] / "django_project"
SETTINGS_MODULE = "demo_site.settings"


@dataclass(frozen=True)
class DemoSite:
    """The demo project, set up in this process."""

    dsn: str
    schema: str
    channel: str
    environ: Mapping[str, str] = field(default_factory=dict)
    """What the project's set-up put in ``os.environ`` (see :func:`project_environment`)."""

    def env(self, channel: str | None = None, settings: str = SETTINGS_MODULE) -> dict[str, str]:
        """The environment of a ``manage.py`` subprocess of the project."""
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": settings,
            "DEMO_SITE_DSN": self.dsn,
            "DEMO_SITE_SCHEMA": self.schema,
            "DEMO_SITE_CHANNEL": channel or self.channel,
            "PYTHONPATH": str(PROJECT),
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("DISPATCHER_CONFIG_FILE", None)
        return env


@contextlib.contextmanager
def project_environment(environ: Mapping[str, str]) -> Iterator[None]:
    """This process as the project needs it: *environ* in ``os.environ`` (its settings
    module, what its settings read, the ``TZ`` Django set), the project's folder on
    ``sys.path``; both as they were afterwards."""
    saved = dict(os.environ)
    os.environ.update(environ)
    time.tzset()
    sys.path.insert(0, str(PROJECT))
    try:
        yield
    finally:
        sys.path.remove(str(PROJECT))
        os.environ.clear()
        os.environ.update(saved)
        time.tzset()


@pytest.fixture(scope="session")
def demo_project(pg_dsn: str) -> Iterator[DemoSite]:
    """The demo project, set up in this process once, for the whole session.

    Django is set up once per process (a second ``django.setup()`` does nothing, and the
    settings module, which reads the schema and channel from the environment, is read once):
    a module-scoped set-up, torn down and made again when the tests of several modules
    interleave, left Django on the first one's dropped schema and the config reset.
    """
    site = DemoSite(pg_dsn, f"demo_site_{uuid.uuid4().hex[:12]}", unique_channel("django"))
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(site.schema)))
        migrate(conn, site.schema)  # the durable queue's tables
    before = dict(os.environ)
    given = {k: v for k, v in site.env().items() if k.startswith(("DEMO_", "DJANGO_"))}
    try:
        with project_environment(given):
            django.setup()  # the app's ready() applies settings.DISPATCHER (once)
            call_command("migrate", verbosity=0)
            environ = {k: v for k, v in os.environ.items() if before.get(k) != v}
        yield replace(site, environ=environ)
    finally:
        connections.close_all()
        close_connections()
        reset()
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(site.schema)))


@pytest.fixture
def demo_site(demo_project: DemoSite) -> Iterator[DemoSite]:
    """The demo project for each test, ``settings.DISPATCHER`` the config in force (the
    Django test modules use it for every test).

    Applied for each test, as ``ready()`` did once: a test of another module in this process
    may have reset the config (or installed its own) since; reset again afterwards.
    """
    from dispatcher.contrib.django.config import configure

    with project_environment(demo_project.environ):
        configure()
        try:
            yield demo_project
        finally:
            close_connections()
            reset()


class ManagePy:
    """A ``manage.py`` subprocess of the demo project, its output in a file."""

    def __init__(self, env: dict[str, str], log_path: Path, *args: str) -> None:
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "manage.py", *args],
                cwd=PROJECT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, pattern: str, timeout: float = 20) -> str:
        regex = re.compile(pattern)

        def found() -> str | None:
            match = regex.search(self.log)
            if match is None and self.process.poll() is not None:
                raise AssertionError(f"manage.py exited ({self.process.returncode}):\n{self.log}")
            return match.group(0) if match else None

        try:
            return wait_until(found, timeout)  # type: ignore[no-any-return]
        except AssertionError as exc:
            raise AssertionError(f"{exc}; no {pattern!r} in the log:\n{self.log}") from None

    def wait_ready(self) -> ManagePy:
        self.wait_for_log(r"listening on channels")
        self.wait_for_log(r"started \(pid")
        return self

    def kill(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


def note(text: str, timeout: float = 15) -> Any:
    """The note *text*, once a task has written it."""
    from demo_notes.models import Note

    return wait_until(lambda: Note.objects.filter(text=text).first(), timeout)


def note_exists(text: str) -> bool:
    from demo_notes.models import Note

    return Note.objects.filter(text=text).exists()


def unique(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:12]}"
